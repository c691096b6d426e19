//! One step: applying an [`Op`] to the machine and checking its outcome against the model
//! (which errors it must, may or must not return, and what the model becomes).

use super::machine::Machine;
use super::{err, Op, ARENA, ARENA_END, MAX_DEVICES};
use crate::platform::{PagemapId, PAGE_SHIFT};
use crate::policy::{AtomicPolicy, AttrUpdate, MigrationPolicy, PreferredLoc, PrefetchLoc};
use crate::Error;
use std::format;
use std::string::String;
use std::vec::Vec;

impl Machine {
    pub(super) fn apply(&mut self, op: &Op) -> Result<(), String> {
        let before = self.pending();
        match *op {
            Op::CpuRead { loc } => self.cpu_read(loc.addr())?,
            Op::CpuWrite { loc, value } => {
                let (addr, v) = (loc.addr(), self.value(value));
                let got = self.mm.write_u64(addr, v);
                let fired = self.fired(&before);
                if self.judge_write("CPU write", addr, got, fired, &[])? {
                    self.data.insert(addr, v);
                }
            }
            Op::DevRead { dev, loc } => {
                let addr = loc.addr();
                let got = self.gpu(dev).read_u64(addr);
                let fired = self.fired(&before);
                self.judge_read("device read", addr, got, fired)?;
            }
            Op::DevWrite { dev, loc, value } => {
                let (addr, v) = (loc.addr(), self.value(value));
                let straddle = self.straddles_read_only(self.gpu(dev), addr);
                let got = self.gpu(dev).write_u64(addr, v);
                let fired = self.fired(&before);
                if straddle && got.is_ok() {
                    self.sum.straddles_rebuilt += 1;
                }
                if self.judge_write("device write", addr, got, fired, &[])? {
                    self.data.insert(addr, v);
                }
            }
            Op::DevAtomic { dev, loc, add } => {
                let addr = loc.addr();
                let add = u64::from(add) + 1;
                let straddle = self.straddles_read_only(self.gpu(dev), addr);
                let got = self.gpu(dev).atomic_add(addr, add);
                let fired = self.fired(&before);
                let want = self.expect(addr);
                let forbidden = self.gpu(dev).svm.attrs_at(addr).atomic == AtomicPolicy::Cpu;
                let must = !forbidden && self.atomic_must_succeed(dev, fired);
                let mut allowed = Vec::new();
                if forbidden {
                    // The policy refuses device atomics: nothing else may happen.
                    allowed.push(Error::Access);
                    if got.is_ok() {
                        return err(format!(
                            "device atomic at {addr:#x} succeeded under the cpu atomic policy"
                        ));
                    }
                    if got == Err(Error::Access) {
                        self.sum.atomics_forbidden += 1;
                    }
                } else if !must {
                    allowed.push(Error::Fault);
                }
                match got {
                    Ok(old) if old != want => {
                        return err(format!(
                            "device atomic at {addr:#x} saw {old:#x}, the model says {want:#x}"
                        ))
                    }
                    Ok(_) => {
                        self.sum.atomics_ok += 1;
                        self.sum.straddles_rebuilt += usize::from(straddle);
                    }
                    Err(Error::Fault) if self.prot(addr) == Some(true) && !must => {
                        self.sum.atomics_refused += 1;
                    }
                    Err(_) => {}
                }
                let wrote =
                    self.judge_write("device atomic", addr, got.map(|_| ()), fired, &allowed)?;
                if wrote {
                    self.data.insert(addr, want.wrapping_add(add));
                }
            }
            Op::Mmap { span, prot, huge } => {
                let (s, e) = span.bounds();
                let overlap = self
                    .mapped
                    .range(s >> PAGE_SHIFT..e >> PAGE_SHIFT)
                    .next()
                    .is_some();
                let got = self.mm.mmap_fixed(s, e - s, prot.flags(), huge);
                match (overlap, got) {
                    (false, Ok(a)) if a == s => {
                        for vpn in s >> PAGE_SHIFT..e >> PAGE_SHIFT {
                            self.mapped.insert(vpn, prot.writable());
                        }
                    }
                    (true, Err(Error::Invalid)) => self.sum.expected_errors += 1,
                    (o, r) => {
                        return err(format!(
                            "mmap [{s:#x}, {e:#x}) (overlap: {o}) returned {r:?}"
                        ))
                    }
                }
            }
            Op::Munmap { span } => {
                let (s, e) = span.bounds();
                self.mm
                    .munmap(s, e - s)
                    .map_err(|e2| format!("munmap [{s:#x}, {e:#x}): {e2:?}"))?;
                self.forget(s, e, true);
            }
            Op::Mprotect { span, prot } => {
                let (s, e) = span.bounds();
                let all = (s >> PAGE_SHIFT..e >> PAGE_SHIFT).all(|v| self.mapped.contains_key(&v));
                match (all, self.mm.mprotect(s, e - s, prot.flags())) {
                    (true, Ok(())) => {
                        for vpn in s >> PAGE_SHIFT..e >> PAGE_SHIFT {
                            self.mapped.insert(vpn, prot.writable());
                        }
                    }
                    (false, Err(Error::NoMem)) => self.sum.expected_errors += 1,
                    (a, r) => {
                        return err(format!(
                            "mprotect [{s:#x}, {e:#x}) (all mapped: {a}) returned {r:?}"
                        ))
                    }
                }
            }
            Op::MadviseDontneed { span } => {
                let (s, e) = span.bounds();
                self.mm
                    .madvise_dontneed(s, e - s)
                    .map_err(|e2| format!("madvise [{s:#x}, {e:#x}): {e2:?}"))?;
                self.forget(s, e, false);
            }
            Op::Migrate { dev, loc } => {
                let g = self.gpu(dev);
                if let Some(r) = g.svm.find(loc.addr()) {
                    let got = g.svm.migrate_to_devmem(&r, &self.details);
                    let fired = self.fired(&before);
                    match got {
                        Ok(_) => {}
                        Err(Error::Busy | Error::NoMem | Error::Again | Error::NotSupported) => {
                            self.sum.migrations_refused += 1
                        }
                        Err(_) if fired > 0 => self.sum.injected_errors += 1,
                        Err(e) => {
                            return err(format!(
                                "migrate [{:#x}, {:#x}) to device {}: {e:?}",
                                r.start(),
                                r.end(),
                                g.dev.id()
                            ))
                        }
                    }
                }
            }
            Op::Evict { dev, loc } => {
                let g = self.gpu(dev);
                if let Some(r) = g.svm.find(loc.addr()) {
                    let got = g.svm.evict(&r);
                    let fired = self.fired(&before);
                    match got {
                        Ok(_) => {}
                        Err(_) if fired > 0 => self.sum.injected_errors += 1,
                        Err(e) => {
                            return err(format!(
                                "evict [{:#x}, {:#x}) of device {}: {e:?}",
                                r.start(),
                                r.end(),
                                g.dev.id()
                            ))
                        }
                    }
                }
            }
            Op::GcRun { dev } => {
                self.gpu(dev).svm.gc_run();
            }
            Op::InjectCopyFail {
                dev,
                nth,
                after_runs,
            } => {
                self.gpu(dev)
                    .dev
                    .inject_copy_fail_at(u64::from(nth % 4) + 1, usize::from(after_runs % 4));
            }
            Op::InjectDmaFail { dev, nth } => {
                self.gpu(dev).dev.inject_dma_fail_at(u64::from(nth % 8) + 1);
            }
            Op::InjectAllocFail { dev, nth } => {
                self.gpu(dev)
                    .dev
                    .inject_alloc_fail_at(u64::from(nth % 4) + 1);
            }
            Op::Fork => {
                if self.child.is_none() {
                    self.child = Some(self.mm.fork());
                }
            }
            Op::ChildExit => {
                if let Some(c) = self.child.take() {
                    c.munmap(ARENA, ARENA_END - ARENA)
                        .map_err(|e| format!("child munmap: {e:?}"))?;
                }
            }
            Op::Advance { ms } => self.world.advance(u64::from(ms) * 1_000_000),
            Op::CpuSweep => {
                let words: Vec<u64> = self.data.keys().copied().collect();
                for a in words {
                    self.cpu_read(a)?;
                }
            }
            Op::SetAttrs {
                dev,
                span,
                preferred,
                atomic,
                system_pages_only,
            } => {
                let (s, e) = span.bounds();
                let g = self.gpu(dev);
                let (pref, expect) = match preferred % (2 + MAX_DEVICES as u8) {
                    0 => (PreferredLoc::DeviceDefault, Ok(())),
                    1 => (PreferredLoc::System, Ok(())),
                    i => {
                        let id = PagemapId(u32::from(i - 2));
                        // The model: an attached pagemap of the device's owner is accepted;
                        // another owner's is NoLink; one that does not exist is Invalid.
                        let expect = match g.svm.pagemap_by_id(id) {
                            None => Err(Error::Invalid),
                            Some(pm) if Some(pm.owner()) == g.svm.owner() => Ok(()),
                            Some(_) => Err(Error::NoLink),
                        };
                        (PreferredLoc::Pagemap(id), expect)
                    }
                };
                let update = AttrUpdate {
                    preferred: Some(pref),
                    migration: Some(if system_pages_only {
                        MigrationPolicy::SystemPagesOnly
                    } else {
                        MigrationPolicy::AllPages
                    }),
                    atomic: Some(match atomic % 4 {
                        0 => AtomicPolicy::Undefined,
                        1 => AtomicPolicy::Device,
                        2 => AtomicPolicy::Global,
                        _ => AtomicPolicy::Cpu,
                    }),
                };
                let got = g.svm.set_attrs(s, e - s, &update);
                let fired = self.fired(&before);
                match (expect, got) {
                    (Ok(()), Ok(())) => {
                        self.sum.attrs_set += 1;
                        self.attrs_touched = true;
                    }
                    (Err(x), Err(y)) if x == y => self.sum.attrs_refused += 1,
                    (_, Err(_)) if fired > 0 => self.sum.injected_errors += 1,
                    (x, y) => {
                        return err(format!(
                            "set_attrs [{s:#x}, {e:#x}) {update:?} on device {}: expected {x:?}, got {y:?}",
                            g.dev.id()
                        ))
                    }
                }
            }
            Op::Prefetch { dev, span, to } => {
                let (s, e) = span.bounds();
                let g = self.gpu(dev);
                let loc = match to % (2 + MAX_DEVICES as u8) {
                    0 => PrefetchLoc::System,
                    1 => PrefetchLoc::Device,
                    i => PrefetchLoc::Pagemap(PagemapId(u32::from(i - 2))),
                };
                // Any outcome is allowed (a hole is `Fault`, no room is `NoMem`/`Busy`, a
                // foreign or missing pagemap `NoLink`/`Invalid`); what must hold is checked
                // after the step: the invariants and every word of the model.
                match g.svm.prefetch(s, e - s, loc) {
                    Ok(()) => self.sum.prefetches_ok += 1,
                    Err(_) => self.sum.prefetches_failed += 1,
                }
            }
        }
        self.sum.injections_fired += self.fired(&before);
        Ok(())
    }
}
