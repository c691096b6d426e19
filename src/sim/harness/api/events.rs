//! Invalidation, garbage collection and close, and the events the harness drives on the simulated
//! machine: CPU writes, `mmap`/`munmap`/`mprotect`, time passing, allocation failures.

use super::machine::Harness;
use super::{typed, ApiOp, EventSpec, MAX_FAIL_ALLOCS, MAX_FAIL_SKIP};
use crate::platform::VmaFlags;
use crate::sim::{check_closed, SimAlloc};
use crate::Event;
use std::format;
use std::string::String;

impl Harness {
    /// The invalidation, teardown and machine-event calls: [`ApiOp::InvalidateBegin`],
    /// [`ApiOp::InvalidateEnd`], [`ApiOp::GcRun`], [`ApiOp::Close`], [`ApiOp::CpuWrite`],
    /// [`ApiOp::Munmap`], [`ApiOp::Mmap`], [`ApiOp::Mprotect`], [`ApiOp::Advance`] and
    /// [`ApiOp::FailAllocs`].
    pub(super) fn step_events(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::InvalidateBegin {
                dev,
                id,
                start,
                end,
                event,
            } => {
                let event = match event {
                    EventSpec::Unmap => Event::Unmap,
                    EventSpec::Clear => Event::Clear,
                    EventSpec::Protection => Event::Protection,
                    EventSpec::Migrate(o) => Event::Migrate {
                        owner: o.map(|o| self.owner_id(o)),
                    },
                    EventSpec::Release => Event::Release,
                };
                let (s, e) = (start.value(self), end.value(self));
                // A driver zaps its own bindings inside the callback: the crate does it through
                // `DevicePageTable::zap`.
                self.gpu(*dev)
                    .svm
                    .invalidate_begin(self.notifier(*id), s, e, event);
            }
            ApiOp::InvalidateEnd {
                dev,
                id,
                start,
                end,
            } => {
                let (s, e) = (start.value(self), end.value(self));
                self.gpu(*dev).svm.invalidate_end(self.notifier(*id), s, e);
            }
            ApiOp::GcRun { dev } => {
                self.gpu(*dev).svm.gc_run();
            }
            ApiOp::Close { dev } => {
                let i = self.dev(*dev);
                self.gpus[i].svm.close();
                self.closed[i] = true;
                SimAlloc::paused(|| check_closed(&self.gpus[i]))
                    .map_err(|e| format!("after close: {e}"))?;
            }
            ApiOp::CpuWrite { page, value } => {
                let (a, _) = Self::arena_span(*page, 0);
                if let Err(e) = self.mm.write_u64(a + 8, *value) {
                    typed(e)?;
                }
            }
            ApiOp::Munmap { page, npages } => {
                let (s, e) = Self::arena_span(*page, *npages);
                self.mm
                    .munmap(s, e - s)
                    .map_err(|err| format!("munmap({s:#x}, {:#x}): {err:?}", e - s))?;
            }
            ApiOp::Mmap {
                page,
                npages,
                read_only,
            } => {
                let (s, e) = Self::arena_span(*page, *npages);
                let flags = if *read_only {
                    VmaFlags::READ
                } else {
                    VmaFlags::READ | VmaFlags::WRITE
                };
                if let Err(err) = self.mm.mmap_fixed(s, e - s, flags, false) {
                    typed(err)?;
                }
            }
            ApiOp::Mprotect {
                page,
                npages,
                read_only,
            } => {
                let (s, e) = Self::arena_span(*page, *npages);
                let flags = if *read_only {
                    VmaFlags::READ
                } else {
                    VmaFlags::READ | VmaFlags::WRITE
                };
                if let Err(err) = self.mm.mprotect(s, e - s, flags) {
                    typed(err)?;
                }
            }
            ApiOp::Advance { ms } => self.world.advance(u64::from(*ms) * 1_000_000),
            ApiOp::FailAllocs { skip, n } => SimAlloc::fail_after(
                u64::from(skip % (MAX_FAIL_SKIP + 1)),
                u64::from(n % (MAX_FAIL_ALLOCS + 1)),
            ),
            _ => return Err(format!("{op:?} is not an event call")),
        }
        Ok(())
    }
}
