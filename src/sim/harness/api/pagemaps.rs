//! Owners and pagemaps: the owner registry (`join`/`leave`), `Svm::set_owner`,
//! `attach_pagemap`/`detach_pagemap`, `DevmemAlloc`, and the pagemap callbacks `page_free` and
//! `migrate_to_ram`.

use super::machine::Harness;
use super::{linked_peers, same_pagemap, typed, ApiOp, PagemapSpec};
use crate::pagemap::{DevmemAlloc, Pagemap, PeerId, PutPage};
use crate::platform::PagemapId;
use crate::sim::{SimDevice, SimDevmem, SimHost, SimPagemapArc};
use crate::Error;
use std::collections::BTreeSet;
use std::format;
use std::string::String;
use std::vec::Vec;

impl Harness {
    /// The owner and pagemap calls: [`ApiOp::OwnerJoin`], [`ApiOp::OwnerLeave`],
    /// [`ApiOp::SetOwner`], [`ApiOp::AttachPagemap`], [`ApiOp::DetachPagemap`],
    /// [`ApiOp::DevmemAlloc`], [`ApiOp::PageFree`] and [`ApiOp::MigrateToRam`].
    #[allow(clippy::too_many_lines)]
    pub(super) fn step_pagemaps(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::PageFree { dev, frame } => {
                let f = self.frame(*dev, *frame);
                let Some(pm) = self.gpu(*dev).svm.pagemap() else {
                    return Ok(());
                };
                if pm.alloc_of(f).is_some_and(|a| a.page_live(f)) {
                    // Freeing a page the CPU still maps: a platform bug (see the module docs).
                    return Ok(());
                }
                let before = pm.stray_frees();
                pm.page_free(f);
                if pm.stray_frees() != before + 1 {
                    return Err(format!(
                        "page_free({f:#x}) of a free frame not counted stray"
                    ));
                }
            }
            ApiOp::MigrateToRam { dev, addr, frame } => {
                let a = addr.value(self);
                let f = self.frame(*dev, *frame);
                let Some(pm) = self.gpu(*dev).svm.pagemap() else {
                    return Ok(());
                };
                let view = self.mm.view(usize::MAX);
                if let Err(e) = pm.migrate_to_ram(&view, a, f) {
                    typed(e)?;
                }
            }
            ApiOp::OwnerJoin { peer } => {
                let was = self.members.contains(peer);
                match self.owners.join(PeerId(*peer)) {
                    Ok(o) if !was => {
                        self.members.insert(*peer);
                        if self.owners.owner_of(PeerId(*peer)) != Some(o) {
                            return Err(format!("join({peer}) = {o:?} but not a member"));
                        }
                        let members = match self.owners.members(o) {
                            Ok(m) => m,
                            // An injected allocation failure: the list cannot be checked.
                            Err(Error::NoMem) => return Ok(()),
                            Err(e) => return Err(format!("members({o:?}) = {e:?}")),
                        };
                        if !members.contains(&PeerId(*peer)) {
                            return Err(format!("join({peer}) = {o:?} but not in members()"));
                        }
                        for &m in members.iter() {
                            if !linked_peers(m, PeerId(*peer)) {
                                return Err(format!("join({peer}) grouped it with {m:?}"));
                            }
                        }
                    }
                    Err(Error::Invalid) if was => {}
                    // Without memory nothing changes: still not a member.
                    Err(Error::NoMem) if !was => {
                        if self.owners.owner_of(PeerId(*peer)).is_some() {
                            return Err(format!("join({peer}) = NoMem but it is a member"));
                        }
                    }
                    other => return Err(format!("join({peer}) (member {was}) = {other:?}")),
                }
            }
            ApiOp::OwnerLeave { peer } => {
                let was = self.members.remove(peer);
                match self.owners.leave(PeerId(*peer)) {
                    Ok(_) if was => {
                        if self.owners.owner_of(PeerId(*peer)).is_some() {
                            return Err(format!("leave({peer}) but still a member"));
                        }
                    }
                    Err(Error::Invalid) if !was => {}
                    // Without memory nothing changes: still a member.
                    Err(Error::NoMem) if was => {
                        self.members.insert(*peer);
                        if self.owners.owner_of(PeerId(*peer)).is_none() {
                            return Err(format!("leave({peer}) = NoMem but it left"));
                        }
                    }
                    other => return Err(format!("leave({peer}) (member {was}) = {other:?}")),
                }
            }
            ApiOp::SetOwner { dev, owner } => {
                let o = owner.map(|o| self.owner_id(o));
                let svm = &self.gpu(*dev).svm;
                let local = svm.pagemap();
                svm.set_owner(o);
                let want = o.or(local.as_ref().map(|p| p.owner()).or(svm.config().owner));
                if svm.owner() != want {
                    return Err(format!("set_owner({o:?}): owner() = {:?}", svm.owner()));
                }
                if !same_pagemap(&svm.pagemap(), &local) {
                    return Err(format!("set_owner({o:?}) changed the local pagemap"));
                }
            }
            ApiOp::AttachPagemap { dev, pagemap } => {
                let Some(pm) = self.pagemap_of(*pagemap) else {
                    return Ok(());
                };
                let svm = &self.gpu(*dev).svm;
                let (local, owner) = (svm.pagemap(), svm.owner());
                let before = svm.pagemap_by_id(pm.id());
                let free = before
                    .as_ref()
                    .is_none_or(|b| SimPagemapArc::ptr_eq(b, &pm));
                let got = svm.attach_pagemap(pm.clone());
                let after = svm.pagemap_by_id(pm.id());
                match got {
                    Ok(()) if free => {
                        if !after.is_some_and(|a| SimPagemapArc::ptr_eq(&a, &pm)) {
                            return Err(format!(
                                "attach_pagemap({:?}) Ok but not attached",
                                pm.id()
                            ));
                        }
                    }
                    Err(Error::Invalid) if !free => {
                        if !same_pagemap(&after, &before) {
                            return Err(format!("refused attach_pagemap({:?}) replaced", pm.id()));
                        }
                    }
                    // The pagemap set could not grow: nothing changed.
                    Err(Error::NoMem) if same_pagemap(&after, &before) => {}
                    other => {
                        return Err(format!(
                            "attach_pagemap({:?}) (id free {free}) = {other:?}",
                            pm.id()
                        ))
                    }
                }
                if !same_pagemap(&svm.pagemap(), &local) || svm.owner() != owner {
                    return Err(format!("attach_pagemap({:?}) changed the device", pm.id()));
                }
            }
            ApiOp::DetachPagemap { dev, id } => {
                let id = self.pagemap_id(*id);
                let svm = &self.gpu(*dev).svm;
                let (local, owner) = (svm.pagemap(), svm.owner());
                let before = svm.pagemap_by_id(id);
                let got = svm.detach_pagemap(id);
                let after = svm.pagemap_by_id(id);
                let is_local = local.as_ref().is_some_and(|l| l.id() == id);
                let ok = if is_local {
                    got.is_none() && same_pagemap(&after, &local)
                } else {
                    same_pagemap(&got, &before) && after.is_none()
                };
                if !ok {
                    return Err(format!(
                        "detach_pagemap({id:?}) (local {is_local}, attached {}) = {:?}",
                        before.is_some(),
                        got.map(|p| p.id())
                    ));
                }
                if !same_pagemap(&svm.pagemap(), &local) || svm.owner() != owner {
                    return Err(format!("detach_pagemap({id:?}) changed the device"));
                }
            }
            ApiOp::DevmemAlloc {
                va_start,
                va_end,
                frames,
                n,
                puts,
            } => {
                let (vs, ve) = (va_start.value(self), va_end.value(self));
                let frames: Vec<u64> = frames
                    .iter()
                    .take(usize::from(n % 7))
                    .map(|f| f.value(self))
                    .collect();
                let distinct: BTreeSet<u64> = frames.iter().copied().collect();
                let valid = vs < ve && !frames.is_empty() && distinct.len() == frames.len();
                let mut owned = crate::HostVec::<SimHost, u64>::new();
                if owned
                    .extend_from_slice(&frames, crate::heap::AllocCtx::MaySleep)
                    .is_err()
                {
                    return Ok(());
                }
                let a = match DevmemAlloc::<SimHost>::new(PagemapId(0), vs, ve, owned) {
                    Ok(a) if valid => a,
                    Err(Error::Invalid) if !valid => return Ok(()),
                    // Duplicates are found in the run array: with no memory for it, `NoMem`
                    // (documented); the cheap checks come first.
                    Err(Error::NoMem) if vs < ve && !frames.is_empty() => return Ok(()),
                    other => {
                        return Err(format!(
                            "DevmemAlloc::new({vs:#x}, {ve:#x}, {frames:x?}) = {other:?}"
                        ))
                    }
                };
                for (i, &f) in frames.iter().enumerate() {
                    if a.index_of(f) != Some(i as u64) || !a.contains(f) || !a.page_live(f) {
                        return Err(format!("{a:?}: frame {f:#x} is not page {i}"));
                    }
                }
                let mut live = distinct;
                for p in puts {
                    let f = match p {
                        Some(i) => frames[usize::from(*i) % frames.len()],
                        None => frames[0].wrapping_add(frames.len() as u64),
                    };
                    let got = a.put_page(f);
                    let want = if !frames.contains(&f) {
                        PutPage::NotMine
                    } else if !live.remove(&f) {
                        PutPage::AlreadyFree
                    } else if live.is_empty() {
                        PutPage::Last
                    } else {
                        PutPage::Freed
                    };
                    if got != want || a.live_pages() != live.len() || a.page_live(f) {
                        return Err(format!("{a:?}: put_page({f:#x}) = {got:?}, model {want:?}"));
                    }
                }
            }
            _ => return Err(format!("{op:?} is not a pagemap call")),
        }
        Ok(())
    }

    /// The pagemap object a spec names (`None`: the device has no device memory).
    /// `None` too when a fresh pagemap cannot be allocated.
    fn pagemap_of(&mut self, spec: PagemapSpec) -> Option<SimPagemapArc> {
        match spec {
            PagemapSpec::Device(d) => self.gpu(d).svm.pagemap(),
            PagemapSpec::Fresh { id, owner } => {
                let dev_id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(8);
                let dev = SimDevice::new(&self.world, dev_id);
                Pagemap::new(self.pagemap_id(id), self.owner_id(owner), SimDevmem(dev)).ok()
            }
        }
    }
}
