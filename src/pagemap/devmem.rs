//! A device-memory allocation: the device pages that back one migration of one range.
//!
//! Every device page points (through its pagemap's run index) to its allocation; the
//! allocation counts its live pages and is released exactly once, when the last one leaves
//! (migrated away, unmapped, or torn down with the process). Each page can leave only once:
//! a second `put_page` of the same page is refused, so a platform bug cannot release the
//! allocation early.

use crate::error::{Error, Result};
use crate::heap::{sort, AllocCtx};
use crate::platform::PagemapId;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use crate::{DefaultHost, Host, HostVec};

/// One contiguous run of device frames of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevmemRun {
    /// First device frame.
    pub dpfn: u64,
    /// Number of frames.
    pub len: u64,
    /// Index of the first frame in the allocation's page order.
    pub index: u64,
}

/// What [`DevmemAlloc::put_page`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutPage {
    /// The page is not part of this allocation.
    NotMine,
    /// The page had already left; nothing changed.
    AlreadyFree,
    /// The page left; others remain.
    Freed,
    /// The page was the last one: the caller must release the allocation (exactly once).
    Last,
}

/// A device-memory allocation (see the module docs). Its arrays live on the allocator of the
/// host `L`.
pub struct DevmemAlloc<L: Host = DefaultHost> {
    pagemap: PagemapId,
    va_start: u64,
    va_end: u64,
    dpfns: HostVec<L, u64>,
    /// Runs sorted by device frame.
    runs: HostVec<L, DevmemRun>,
    /// One bit per page, set once the page left.
    gone: HostVec<L, AtomicU64>,
    live: AtomicUsize,
    timeslice_end: AtomicU64,
}

impl<L: Host> core::fmt::Debug for DevmemAlloc<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DevmemAlloc")
            .field("pagemap", &self.pagemap)
            .field("va_start", &self.va_start)
            .field("va_end", &self.va_end)
            .field("dpfns", &self.dpfns)
            .field("runs", &self.runs)
            .field("gone", &self.gone)
            .field("live", &self.live)
            .field("timeslice_end", &self.timeslice_end)
            .finish()
    }
}

impl<L: Host> DevmemAlloc<L> {
    /// An allocation of `dpfns` (page `i` backs virtual page `va_start + i * PAGE_SIZE`), all
    /// pages live. `dpfns` is kept as it is (no copy).
    ///
    /// Errors: [`Error::Invalid`] if `dpfns` is empty or has duplicates, or if
    /// `va_start >= va_end`; [`Error::NoMem`] when the run and bitmap arrays cannot be
    /// allocated (duplicates are found in the run array, so with no memory for it a list with
    /// duplicates gets `NoMem`; the other checks come first). On error `dpfns` is dropped
    /// (freed).
    ///
    /// Context: may sleep; allocates two arrays (runs, one bit per page) with
    /// [`AllocCtx::MaySleep`]; takes no lock.
    pub fn new(
        pagemap: PagemapId,
        va_start: u64,
        va_end: u64,
        dpfns: HostVec<L, u64>,
    ) -> Result<Self> {
        if dpfns.is_empty() || va_start >= va_end {
            return Err(Error::Invalid);
        }
        let mut runs: HostVec<L, DevmemRun> = HostVec::<L, DevmemRun>::new();
        let mut i = 0usize;
        while let Some(&first) = dpfns.get(i) {
            let mut len = 1u64;
            while dpfns
                .get(i.saturating_add(len as usize))
                .is_some_and(|&d| Some(d) == first.checked_add(len))
            {
                len = len.saturating_add(1);
            }
            runs.push(
                DevmemRun {
                    dpfn: first,
                    len,
                    index: i as u64,
                },
                AllocCtx::MaySleep,
            )?;
            i = i.saturating_add(len as usize);
        }
        sort::sort_unstable_by_key(&mut runs, |r| r.dpfn);
        for (a, b) in runs.iter().zip(runs.iter().skip(1)) {
            // A run whose end overflows reaches the last frame, `u64::MAX`: every later run
            // overlaps it (saturating here would accept a duplicate `u64::MAX`).
            if a.dpfn.checked_add(a.len).is_none_or(|end| end > b.dpfn) {
                return Err(Error::Invalid);
            }
        }
        let words = dpfns.len().div_ceil(64);
        let mut gone: HostVec<L, AtomicU64> = HostVec::<L, AtomicU64>::new();
        gone.reserve_exact(words, AllocCtx::MaySleep)?;
        for _ in 0..words {
            // Cannot fail: the room was reserved just above.
            let _ = gone.push_within_capacity(AtomicU64::new(0));
        }
        let n = dpfns.len();
        Ok(DevmemAlloc {
            pagemap,
            va_start,
            va_end,
            dpfns,
            runs,
            gone,
            live: AtomicUsize::new(n),
            timeslice_end: AtomicU64::new(0),
        })
    }

    /// The pagemap it belongs to.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn pagemap(&self) -> PagemapId {
        self.pagemap
    }
    /// The virtual interval it was migrated for.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn va(&self) -> (u64, u64) {
        (self.va_start, self.va_end)
    }
    /// Its device frames, in virtual-page order.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn dpfns(&self) -> &[u64] {
        &self.dpfns
    }
    /// Its runs of contiguous frames, sorted by frame.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn runs(&self) -> &[DevmemRun] {
        &self.runs
    }
    /// Number of pages still live.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn live_pages(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
    /// End of the minimum residency time (platform nanoseconds).
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn timeslice_end(&self) -> u64 {
        self.timeslice_end.load(Ordering::Acquire)
    }
    /// Set the end of the minimum residency time.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn set_timeslice_end(&self, t: u64) {
        self.timeslice_end.store(t, Ordering::Release);
    }

    /// The index of `dpfn` in the allocation (binary search over the runs, O(log runs)).
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn index_of(&self, dpfn: u64) -> Option<u64> {
        let k = self.runs.partition_point(|r| r.dpfn <= dpfn);
        let r = self.runs.get(k.checked_sub(1)?)?;
        let off = dpfn.checked_sub(r.dpfn)?;
        (off < r.len).then(|| r.index.saturating_add(off))
    }

    /// Whether `dpfn` belongs to the allocation.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn contains(&self, dpfn: u64) -> bool {
        self.index_of(dpfn).is_some()
    }

    /// Whether the page `dpfn` is still live.
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn page_live(&self, dpfn: u64) -> bool {
        let Some(i) = self.index_of(dpfn) else {
            return false;
        };
        let (w, bit) = ((i / 64) as usize, i % 64);
        self.gone
            .get(w)
            .is_some_and(|g| g.load(Ordering::Acquire) & (1u64 << bit) == 0)
    }

    /// The page `dpfn` leaves the allocation (SPEC §6). Safe to call concurrently from any
    /// number of threads; exactly one caller ever sees [`PutPage::Last`].
    ///
    /// Errors: none (the outcome is the [`PutPage`] returned).
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes no lock.
    pub fn put_page(&self, dpfn: u64) -> PutPage {
        match self.mark_gone(dpfn) {
            PutPage::Freed => self.drop_live(1),
            other => other,
        }
    }

    /// The first half of [`put_page`](Self::put_page): mark `dpfn` gone without touching the
    /// live count (`Freed` if it was live); [`drop_live`](Self::drop_live) then subtracts a
    /// batch of such pages at once.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub(crate) fn mark_gone(&self, dpfn: u64) -> PutPage {
        let Some(i) = self.index_of(dpfn) else {
            return PutPage::NotMine;
        };
        let (w, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let Some(word) = self.gone.get(w) else {
            return PutPage::NotMine;
        };
        if word.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return PutPage::AlreadyFree;
        }
        PutPage::Freed
    }

    /// Subtract `n` pages marked gone from the live count: [`PutPage::Last`] for the call that
    /// takes it to zero (exactly one), [`PutPage::Freed`] otherwise.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub(crate) fn drop_live(&self, n: usize) -> PutPage {
        if n > 0 && self.live.fetch_sub(n, Ordering::AcqRel) == n {
            PutPage::Last
        } else {
            PutPage::Freed
        }
    }
}

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use super::*;

    type D = DevmemAlloc<DefaultHost>;

    fn frames(f: &[u64]) -> HostVec<DefaultHost, u64> {
        let mut v = HostVec::<DefaultHost, u64>::new();
        v.extend_from_slice(f, AllocCtx::MaySleep).unwrap();
        v
    }

    #[test]
    fn runs_and_lookup() {
        let a = D::new(PagemapId(1), 0, 0x6000, frames(&[10, 11, 12, 40, 41, 5])).unwrap();
        assert_eq!(a.runs().len(), 3);
        assert_eq!(a.index_of(12), Some(2));
        assert_eq!(a.index_of(41), Some(4));
        assert_eq!(a.index_of(5), Some(5));
        assert_eq!(a.index_of(13), None);
        assert_eq!(a.index_of(0), None);
        let invalid = |va_end, dpfns: &[u64]| D::new(PagemapId(1), 0, va_end, frames(dpfns)).err();
        assert_eq!(invalid(0x1000, &[]), Some(Error::Invalid));
        assert_eq!(invalid(0x3000, &[1, 2, 1]), Some(Error::Invalid));
        assert_eq!(invalid(0, &[1]), Some(Error::Invalid));
    }

    #[test]
    fn released_exactly_once() {
        let a = D::new(PagemapId(1), 0, 0x3000, frames(&[7, 8, 100])).unwrap();
        assert_eq!(a.put_page(8), PutPage::Freed);
        assert_eq!(a.put_page(8), PutPage::AlreadyFree);
        assert_eq!(a.put_page(9), PutPage::NotMine);
        assert!(!a.page_live(8));
        assert!(a.page_live(7));
        assert_eq!(a.put_page(100), PutPage::Freed);
        assert_eq!(a.live_pages(), 1);
        assert_eq!(a.put_page(7), PutPage::Last);
        assert_eq!(a.put_page(7), PutPage::AlreadyFree);
        assert_eq!(a.live_pages(), 0);
    }
}
