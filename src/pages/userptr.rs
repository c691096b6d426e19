//! Userptr mappings (SPEC §3): the page state of an interval mirrored without a range tree,
//! with its own sequence counter and the invalidation callbacks its driver forwards.

use super::{get_pages_loop, local_resolver, Commit, PageEntry, PageState, PagesCtx, RetryPolicy};
use crate::error::{Error, Result};
use crate::platform::{DmaMapper, Platform, PAGE_SIZE};
use crate::sync::{class, RwLock, SeqCounter};
use crate::{DefaultHost, Host};

/// Page state for a userptr mapping: pages of `[start, end)` mirrored without a range tree.
///
/// The driver registers its own interval notifier for the userptr with the platform and
/// forwards its callbacks to [`invalidate_begin`](Self::invalidate_begin) and
/// [`invalidate_end`](Self::invalidate_end).
#[derive(Debug)]
pub struct Userptr<L: Host = DefaultHost> {
    start: u64,
    end: u64,
    seq: SeqCounter,
    state: RwLock<L, PageState<L>>,
}

impl Userptr {
    /// A userptr over `[start, end)` on the default lock facet
    /// ([`with_host`](Self::with_host) chooses another).
    ///
    /// Errors: [`Error::Invalid`] unless page aligned and non-empty.
    ///
    /// Context: does not sleep; takes no lock; allocates nothing.
    pub fn new(start: u64, end: u64) -> Result<Userptr> {
        Self::with_host(start, end)
    }
}

impl<L: Host> Userptr<L> {
    /// A userptr over `[start, end)` whose lock comes from the facet `L`.
    ///
    /// Errors: [`Error::Invalid`] unless page aligned and non-empty; [`Error::NoMem`] if the
    /// host cannot create the userptr's lock.
    ///
    /// Context: may sleep if the host allocates its lock objects (see
    /// [`RawRwLock::new`](crate::sync::RawRwLock::new)); takes no lock; allocates nothing else.
    pub fn with_host(start: u64, end: u64) -> Result<Userptr<L>> {
        if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(Error::Invalid);
        }
        Ok(Userptr {
            start,
            end,
            seq: SeqCounter::new(),
            state: RwLock::new(&class::USERPTR, PageState::new())?,
        })
    }

    /// First byte.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// One past the last byte.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Collect and map the pages (SPEC §3 `get_pages`); a still-valid state that satisfies
    /// `ctx` is reused. Errors as [`Svm::get_pages`](crate::Svm::get_pages).
    ///
    /// Context: may sleep: collects the CPU pages through the platform with no lock held. Allocates
    /// with [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) and no lock held (the CPU page array and the entry array,
    /// counted before the lock is taken). Takes the userptr lock shared to map the pages and
    /// exclusively to commit.
    pub fn get_pages<P: Platform>(
        &self,
        p: &P,
        ctx: &PagesCtx,
        policy: &RetryPolicy,
    ) -> Result<()> {
        if self.state.read().satisfies(ctx) {
            return Ok(());
        }
        get_pages_loop(
            p,
            policy,
            (self.start, self.end),
            ctx,
            &local_resolver,
            || Ok(self.seq.read_begin()),
            |seq, map| {
                // Mapped under the lock shared (no invalidation can free the pages meanwhile),
                // committed under it exclusive.
                let m = {
                    let _st = self.state.read();
                    if self.seq.read_retry(seq) {
                        return Ok(Commit::Stale);
                    }
                    map()?
                };
                let mut st = self.state.write();
                if self.seq.read_retry(seq) {
                    return Ok(Commit::Retry(m));
                }
                st.commit(p.dma(), m);
                Ok(Commit::Done)
            },
            || {},
        )
    }

    /// Whether the pages are usable by the device.
    ///
    /// Context: takes the userptr lock shared; allocates nothing.
    pub fn pages_valid(&self) -> bool {
        self.state.read().valid()
    }

    /// Run `f` over the committed entries with the lock held shared, so no invalidation can
    /// complete meanwhile. Errors: [`Error::Again`] if the pages are not valid.
    ///
    /// Context: takes the userptr lock shared and calls `f` with it held; allocates nothing.
    pub fn bind<R>(&self, f: impl FnOnce(u64, &[PageEntry]) -> R) -> Result<R> {
        let st = self.state.read();
        if !st.valid() {
            return Err(Error::Again);
        }
        Ok(f(self.start, st.entries()))
    }

    /// Invalidation begins over `[start, end)`: the caller zaps the device mappings; this bumps
    /// the sequence and unmaps the pages if the interval overlaps.
    ///
    /// Context: allocates nothing; takes the userptr's lock exclusively (waiting for it).
    pub fn invalidate_begin<D: DmaMapper>(&self, dma: &D, start: u64, end: u64) {
        let mut st = self.state.write();
        self.begin_locked(&mut st, dma, start, end);
    }

    /// [`invalidate_begin`](Self::invalidate_begin) for a caller that must not sleep: the lock
    /// is only try-locked.
    ///
    /// Errors: [`Error::Again`] if the lock is held right now; nothing changed then.
    ///
    /// Context: never sleeps; allocates nothing.
    pub fn invalidate_begin_nonblock<D: DmaMapper>(
        &self,
        dma: &D,
        start: u64,
        end: u64,
    ) -> Result<()> {
        let mut st = self.state.try_write().ok_or(Error::Again)?;
        self.begin_locked(&mut st, dma, start, end);
        Ok(())
    }

    fn begin_locked<D: DmaMapper>(&self, st: &mut PageState<L>, dma: &D, start: u64, end: u64) {
        self.seq.begin();
        if start < self.end && self.start < end {
            st.unmap(dma);
        }
    }

    /// Invalidation ends.
    ///
    /// Context: takes the userptr lock exclusively (waiting for it); allocates nothing.
    pub fn invalidate_end(&self) {
        let _st = self.state.write();
        self.seq.end();
    }

    /// Unmap the pages (idempotent).
    ///
    /// Context: takes the userptr lock exclusively; DMA-unmaps under it; allocates nothing.
    pub fn unmap_pages<D: DmaMapper>(&self, dma: &D) {
        self.state.write().unmap(dma);
    }

    /// Unmap and release the page array.
    ///
    /// Context: as [`unmap_pages`](Self::unmap_pages); also frees the page array.
    pub fn free_pages<D: DmaMapper>(&self, dma: &D) {
        self.state.write().free(dma);
    }
}
