//! The scenario runner and the checks scenarios are written with: every check returns a
//! [`Stop`] instead of panicking, every backend step is followed by the backend's own check.

use super::report::{Failure, Report, Stop};
use super::{Backend, MappedPage, PageKind};
use crate::platform::{VmaFlags, PAGE_SIZE};
use crate::{Access, Error, Result, Svm};

/// The outcome of a scenario (or of one of its steps).
pub(crate) type Step<T = ()> = core::result::Result<T, Stop>;

/// A scenario: checks against a fresh backend.
pub(crate) type Scenario<B> = fn(&mut T<'_, B>) -> Step;

pub(crate) const P: u64 = PAGE_SIZE;
pub(crate) const K64: u64 = 64 << 10;
pub(crate) const M: u64 = 1 << 20;
pub(crate) const M2: u64 = 2 << 20;
pub(crate) const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
pub(crate) const RO: VmaFlags = VmaFlags::READ;

/// `a + b` (addresses and offsets of the scenarios never wrap; wrapping keeps it panic-free).
pub(crate) const fn at(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

/// `a * b`, wrapping (see [`at`]).
pub(crate) const fn mul(a: u64, b: u64) -> u64 {
    a.wrapping_mul(b)
}

/// A count as `u64`.
pub(crate) fn n(x: usize) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// An error as the unsigned errno a [`Failure`] records.
pub(crate) fn code(e: Error) -> u64 {
    u64::from(e.errno().unsigned_abs())
}

/// A recognisable value for the word at `addr` (`gen` tells writes apart).
pub(crate) const fn tag(addr: u64, gen: u64) -> u64 {
    (addr ^ 0x5a5a_0000_0000_0000).wrapping_add(gen.wrapping_mul(0x1_0000_0001))
}

/// Run scenario `name` against a fresh backend from `make`, recording its outcome in `report`.
pub(crate) fn run<B: Backend, F: FnMut() -> Result<B>>(
    make: &mut F,
    report: &mut Report,
    name: &'static str,
    scenario: Scenario<B>,
) {
    let outcome = match make() {
        Ok(mut b) => {
            let mut t = T {
                b: &mut b,
                scn: name,
            };
            scenario(&mut t).and_then(|()| t.sane())
        }
        Err(Error::NotSupported) => Err(Stop::Skip),
        Err(e) => Err(Stop::Fail(Failure {
            scenario: name,
            check: "backend set-up",
            addr: 0,
            expected: 0,
            found: code(e),
            error: Some(e),
        })),
    };
    report.record(outcome);
}

/// One scenario's view of its backend.
pub(crate) struct T<'a, B: Backend> {
    /// The backend.
    pub(crate) b: &'a mut B,
    /// The scenario's name.
    pub(crate) scn: &'static str,
}

impl<B: Backend> T<'_, B> {
    /// Device `dev`'s `Svm`.
    pub(crate) fn svm(&self, dev: usize) -> &Svm<B::P> {
        self.b.svm(dev)
    }

    /// A failure of `check`.
    pub(crate) fn fail(&self, check: &'static str, addr: u64, expected: u64, found: u64) -> Stop {
        Stop::Fail(Failure {
            scenario: self.scn,
            check,
            addr,
            expected,
            found,
            error: None,
        })
    }

    /// A call failed with `e` where it should have succeeded.
    pub(crate) fn failed_call(&self, check: &'static str, addr: u64, e: Error) -> Stop {
        Stop::Fail(Failure {
            scenario: self.scn,
            check,
            addr,
            expected: 0,
            found: code(e),
            error: Some(e),
        })
    }

    /// Check `found == expected`.
    pub(crate) fn eq(&self, check: &'static str, addr: u64, expected: u64, found: u64) -> Step {
        if found == expected {
            Ok(())
        } else {
            Err(self.fail(check, addr, expected, found))
        }
    }

    /// Check that `cond` holds.
    pub(crate) fn is(&self, check: &'static str, addr: u64, cond: bool) -> Step {
        self.eq(check, addr, 1, u64::from(cond))
    }

    /// The value of a call that must succeed.
    pub(crate) fn ok<V>(&self, check: &'static str, addr: u64, r: Result<V>) -> Step<V> {
        r.map_err(|e| self.failed_call(check, addr, e))
    }

    /// Check that a call failed with `want`.
    pub(crate) fn err<V>(&self, check: &'static str, addr: u64, r: Result<V>, want: Error) -> Step {
        match r {
            Err(e) if e == want => Ok(()),
            Err(e) => Err(Stop::Fail(Failure {
                scenario: self.scn,
                check,
                addr,
                expected: code(want),
                found: code(e),
                error: Some(e),
            })),
            Ok(_) => Err(self.fail(check, addr, code(want), 0)),
        }
    }

    /// Skip the scenario unless `cond`.
    pub(crate) fn need(&self, cond: bool) -> Step {
        if cond {
            Ok(())
        } else {
            Err(Stop::Skip)
        }
    }

    /// The backend's own invariant check.
    pub(crate) fn sane(&mut self) -> Step {
        let r = self.b.self_check();
        self.ok("backend invariants (self_check)", 0, r)
    }

    /// Whether device `dev` has device memory.
    pub(crate) fn has_devmem(&self, dev: usize) -> bool {
        self.b.device_pages_in_use(dev).is_some()
    }

    /// Map `len` bytes; skips the scenario if the backend cannot.
    pub(crate) fn mmap(&mut self, len: u64, flags: VmaFlags) -> Step<u64> {
        let r = self.b.mmap(len, flags);
        let a = match r {
            Err(Error::NotSupported) => return Err(Stop::Skip),
            r => self.ok("mmap", 0, r)?,
        };
        self.sane()?;
        Ok(a)
    }

    /// Unmap `[addr, addr+len)`.
    pub(crate) fn munmap(&mut self, addr: u64, len: u64) -> Step {
        let r = self.b.munmap(addr, len);
        self.ok("munmap", addr, r)?;
        self.sane()
    }

    /// A CPU write that must succeed.
    pub(crate) fn cpu_write(&mut self, addr: u64, val: u64) -> Step {
        let r = self.b.cpu_write(addr, val);
        self.ok("CPU write", addr, r)?;
        self.sane()
    }

    /// A CPU read.
    pub(crate) fn try_cpu_read(&mut self, addr: u64) -> Step<Result<u64>> {
        let r = self.b.cpu_read(addr);
        self.sane()?;
        Ok(r)
    }

    /// A CPU read that must return `want`.
    pub(crate) fn cpu_read_is(&mut self, check: &'static str, addr: u64, want: u64) -> Step {
        let r = self.try_cpu_read(addr)?;
        let v = self.ok(check, addr, r)?;
        self.eq(check, addr, want, v)
    }

    /// Fill `[start, end)` with [`tag`]`(addr, gen)` every `stride` bytes, from the CPU.
    pub(crate) fn cpu_fill(&mut self, start: u64, end: u64, stride: u64, gen: u64) -> Step {
        let mut a = start;
        while a < end {
            self.cpu_write(a, tag(a, gen))?;
            a = at(a, stride.max(8));
        }
        Ok(())
    }

    /// A device access as the device does it: through the page table, faulting on a miss.
    fn device_access(&mut self, dev: usize, addr: u64, write: Option<u64>) -> Result<u64> {
        let access = if write.is_some() {
            Access::Write
        } else {
            Access::Read
        };
        let mut faults = 0u32;
        loop {
            let r = match write {
                Some(v) => self.b.device_write(dev, addr, v).map(|()| v),
                None => self.b.device_read(dev, addr),
            };
            match r {
                Err(Error::Fault) if faults < 4 => {
                    faults = faults.saturating_add(1);
                    self.b.device_fault(dev, addr, access)?;
                }
                r => return r,
            }
        }
    }

    /// A device read (faulting on a miss).
    pub(crate) fn try_dev_read(&mut self, dev: usize, addr: u64) -> Step<Result<u64>> {
        let r = self.device_access(dev, addr, None);
        self.sane()?;
        Ok(r)
    }

    /// A device write (faulting on a miss).
    pub(crate) fn try_dev_write(&mut self, dev: usize, addr: u64, val: u64) -> Step<Result<()>> {
        let r = self.device_access(dev, addr, Some(val)).map(|_| ());
        self.sane()?;
        Ok(r)
    }

    /// A device read that must return `want`.
    pub(crate) fn dev_read_is(
        &mut self,
        check: &'static str,
        dev: usize,
        addr: u64,
        want: u64,
    ) -> Step {
        let r = self.try_dev_read(dev, addr)?;
        let v = self.ok(check, addr, r)?;
        self.eq(check, addr, want, v)
    }

    /// A device write that must succeed.
    pub(crate) fn dev_write(&mut self, dev: usize, addr: u64, val: u64) -> Step {
        let r = self.try_dev_write(dev, addr, val)?;
        self.ok("device write", addr, r)
    }

    /// A device fault that must fail with `want`, leaving nothing mapped at `addr`.
    pub(crate) fn fault_err(
        &mut self,
        check: &'static str,
        dev: usize,
        addr: u64,
        access: Access,
        want: Error,
    ) -> Step {
        let r = self.b.device_fault(dev, addr, access);
        self.sane()?;
        self.err(check, addr, r, want)
    }

    /// What device `dev` maps at `addr`.
    pub(crate) fn pte(&self, dev: usize, addr: u64) -> Option<MappedPage> {
        self.b.device_pte(dev, addr)
    }

    /// The kind of page device `dev` maps at `addr`, `None` if unmapped.
    pub(crate) fn kind(&self, dev: usize, addr: u64) -> Option<PageKind> {
        self.pte(dev, addr).map(|p| p.kind)
    }

    /// Check that device `dev` maps `addr` with `kind`.
    pub(crate) fn mapped_as(
        &self,
        check: &'static str,
        dev: usize,
        addr: u64,
        kind: PageKind,
    ) -> Step {
        let found = self.kind(dev, addr);
        self.eq(check, addr, kind_code(Some(kind)), kind_code(found))
    }

    /// Pages of `[start, end)` device `dev` maps.
    pub(crate) fn mapped_in(&self, dev: usize, start: u64, end: u64) -> u64 {
        let mut a = start;
        let mut count = 0u64;
        while a < end {
            if self.pte(dev, a).is_some() {
                count = count.saturating_add(1);
            }
            a = at(a, P);
        }
        count
    }

    /// Check that device `dev` maps nothing in `[start, end)`.
    pub(crate) fn unmapped(&self, check: &'static str, dev: usize, start: u64, end: u64) -> Step {
        self.eq(check, start, 0, self.mapped_in(dev, start, end))
    }

    /// Ranges of device `dev` overlapping `[start, end)`.
    pub(crate) fn ranges_in(&self, dev: usize, start: u64, end: u64) -> u64 {
        let mut count = 0u64;
        self.svm(dev).for_each_range(|_, r| {
            if r.start() < end && start < r.end() {
                count = count.saturating_add(1);
            }
        });
        count
    }

    /// Check the contract of the range around `addr` (SPEC §3, chunk selection): it exists,
    /// contains `addr`, lies inside `[vma_start, vma_end)`, has one of the configured chunk
    /// sizes and is aligned to it.
    pub(crate) fn range_ok(&self, dev: usize, addr: u64, vma_start: u64, vma_end: u64) -> Step {
        let Some(r) = self.svm(dev).find(addr) else {
            return Err(self.fail("a range covers the faulted address", addr, 1, 0));
        };
        let (s, e, size) = (r.start(), r.end(), r.size());
        self.is("range contains the address", addr, s <= addr && addr < e)?;
        self.is("range inside its VMA", s, vma_start <= s && e <= vma_end)?;
        let cfg = self.svm(dev).config();
        let chunk = cfg.chunk_sizes.contains(&size);
        self.is("range size is a configured chunk size", s, chunk)?;
        self.eq(
            "range aligned to its size",
            s,
            0,
            s.checked_rem(size).unwrap_or(1),
        )
    }

    /// Live DMA mappings of device `dev`.
    pub(crate) fn dma(&self, dev: usize) -> u64 {
        self.b.live_dma_mappings(dev)
    }
}

/// A page kind as a number for [`Failure`] (0 = unmapped, 1 system, 2 local, 3 peer).
pub(crate) fn kind_code(k: Option<PageKind>) -> u64 {
    match k {
        None => 0,
        Some(PageKind::System) => 1,
        Some(PageKind::Local) => 2,
        Some(PageKind::Peer) => 3,
    }
}
