//! Attributes and policy: `Svm::set_attrs`, `set_attrs_raw`, `prefetch`, `policy::decide` and
//! the harness's own `AttrStore`.

use super::machine::Harness;
use super::{access_of, typed, ApiOp};
use crate::policy::{
    decide, Attrs, DecisionInput, DeviceCaps, PolicyConfig, PrefetchLoc, RangeHistory, RawAttr,
};
use crate::{Access, Error};
use std::format;
use std::string::String;
use std::vec::Vec;

impl Harness {
    /// The attribute and policy calls: [`ApiOp::SetAttrs`], [`ApiOp::SetAttrsRaw`],
    /// [`ApiOp::Prefetch`], [`ApiOp::Decide`] and [`ApiOp::AttrStore`].
    #[allow(clippy::too_many_lines)]
    pub(super) fn step_attrs(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::SetAttrs {
                dev,
                start,
                len,
                update,
            } => {
                let (s, l) = (start.value(self), len.value(self));
                let u = self.update(*update);
                let before = self.attrs_around(*dev, s, l);
                let got = self.gpu(*dev).svm.set_attrs(s, l, &u);
                self.expect_closed_if(*dev, "set_attrs", &got)?;
                if got == Err(Error::NoMem) && self.attrs_around(*dev, s, l) != before {
                    return Err(format!(
                        "set_attrs({s:#x}, {l:#x}) = NoMem changed the state"
                    ));
                }
            }
            ApiOp::SetAttrsRaw {
                dev,
                start,
                len,
                raw,
            } => {
                let (s, l) = (start.value(self), len.value(self));
                let raw: Vec<RawAttr> = raw
                    .iter()
                    .take(4)
                    .map(|r| RawAttr {
                        kind: r.kind % 5,
                        value: r.value.value(self),
                        reserved: if r.reserved % 4 == 0 { 0 } else { r.reserved },
                    })
                    .collect();
                let before = self.attrs_around(*dev, s, l);
                let got = self.gpu(*dev).svm.set_attrs_raw(s, l, &raw);
                if let Err(e) = got {
                    typed(e)?;
                }
                if got == Err(Error::NoMem) && self.attrs_around(*dev, s, l) != before {
                    return Err(format!(
                        "set_attrs_raw({s:#x}, {l:#x}) = NoMem changed the state"
                    ));
                }
            }
            ApiOp::Prefetch {
                dev,
                start,
                len,
                loc,
                id,
            } => {
                let (s, l) = (start.value(self), len.value(self));
                let loc = match loc % 3 {
                    0 => PrefetchLoc::System,
                    1 => PrefetchLoc::Device,
                    _ => PrefetchLoc::Pagemap(self.pagemap_id(*id)),
                };
                let got = self.gpu(*dev).svm.prefetch(s, l, loc);
                self.expect_closed_if(*dev, "prefetch", &got)?;
            }
            ApiOp::Decide {
                range_size,
                access,
                attrs,
                has_devmem,
                default_to_devmem,
                migrate_failed,
                threshold,
                retries,
                atomics_on_sysmem,
            } => {
                let a = self.update(*attrs).apply(Attrs::default());
                let input = DecisionInput {
                    range_size: range_size.value(self),
                    access: access_of(*access),
                    attrs: a,
                    caps: DeviceCaps {
                        has_devmem: *has_devmem,
                        default_to_devmem: *default_to_devmem,
                    },
                    history: RangeHistory {
                        migrate_failed: *migrate_failed,
                    },
                };
                let cfg = PolicyConfig {
                    migrate_threshold: threshold.value(self),
                    devmem_only_retries: *retries,
                    atomics_on_sysmem: *atomics_on_sysmem,
                };
                match decide(&input, &cfg) {
                    Ok(d) => {
                        if d.devmem_only && (d.migrate_to.is_none() || !has_devmem) {
                            return Err(format!("decide: {d:?} for {input:?}"));
                        }
                    }
                    Err(e) => {
                        typed(e)?;
                        if input.access != Access::Atomic {
                            return Err(format!("decide refused a non-atomic access: {e:?}"));
                        }
                    }
                }
            }
            ApiOp::AttrStore {
                start,
                end,
                update,
                probe,
            } => {
                let (s, e, p) = (start.value(self), end.value(self), probe.value(self));
                let u = self.update(*update);
                let Ok(before) = self.attrs.try_clone(crate::heap::AllocCtx::MaySleep) else {
                    return Ok(());
                };
                let want_at = |a: u64| {
                    let old = before.get(a);
                    if s <= a && a < e {
                        u.apply(old)
                    } else {
                        old
                    }
                };
                match self.attrs.set(s, e, &u, crate::heap::AllocCtx::MaySleep) {
                    Ok(()) if s < e => {}
                    Err(Error::NoMem) if s < e => {
                        if self.attrs != before {
                            return Err("AttrStore::set without memory changed the store".into());
                        }
                        return Ok(());
                    }
                    Err(Error::Invalid) if s >= e => {
                        if self.attrs != before {
                            return Err("refused AttrStore::set changed the store".into());
                        }
                    }
                    other => return Err(format!("AttrStore::set({s:#x}, {e:#x}) = {other:?}")),
                }
                let points = [p, s, e, s.wrapping_sub(1), e.wrapping_sub(1), 0, u64::MAX];
                for a in points {
                    let got = self.attrs.get(a);
                    let want = if s < e { want_at(a) } else { before.get(a) };
                    if got != want {
                        return Err(format!("AttrStore::get({a:#x}) = {got:?}, want {want:?}"));
                    }
                    let (lo, hi) = self.attrs.extent(a);
                    if !(lo <= a && (a < hi || hi == u64::MAX)) {
                        return Err(format!("AttrStore::extent({a:#x}) = [{lo:#x}, {hi:#x})"));
                    }
                }
                let mut prev: Option<(u64, Attrs)> = None;
                for (ss, se, at) in self.attrs.iter() {
                    let bad = ss >= se
                        || at == Attrs::default()
                        || prev.is_some_and(|(pe, pa)| pe > ss || (pe == ss && pa == at));
                    if bad {
                        return Err(format!("AttrStore segments malformed: {:?}", self.attrs));
                    }
                    prev = Some((se, at));
                }
            }
            _ => return Err(format!("{op:?} is not an attribute call")),
        }
        Ok(())
    }
}
