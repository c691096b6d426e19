//! A device-memory allocation: the device pages that back one migration of one range.
//!
//! Every device page points (through its pagemap's run index) to its allocation; the
//! allocation counts its live pages and is released exactly once, when the last one leaves
//! (migrated away, unmapped, or torn down with the process). Each page can leave only once:
//! a second `put_page` of the same page is refused, so a platform bug cannot release the
//! allocation early.

use crate::error::{Error, Result};
use crate::platform::PagemapId;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use alloc::vec::Vec;

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

/// A device-memory allocation (see the module docs).
#[derive(Debug)]
pub struct DevmemAlloc {
    pagemap: PagemapId,
    va_start: u64,
    va_end: u64,
    dpfns: Vec<u64>,
    /// Runs sorted by device frame.
    runs: Vec<DevmemRun>,
    /// One bit per page, set once the page left.
    gone: Vec<AtomicU64>,
    live: AtomicUsize,
    timeslice_end: AtomicU64,
}

impl DevmemAlloc {
    /// An allocation of `dpfns` (page `i` backs virtual page `va_start + i * PAGE_SIZE`), all
    /// pages live. Errors: [`Error::Invalid`] if `dpfns` is empty or has duplicates;
    /// [`Error::NoMem`].
    pub fn new(pagemap: PagemapId, va_start: u64, va_end: u64, dpfns: Vec<u64>) -> Result<Self> {
        if dpfns.is_empty() || va_start >= va_end {
            return Err(Error::Invalid);
        }
        let mut runs: Vec<DevmemRun> = Vec::new();
        let mut i = 0usize;
        while let Some(&first) = dpfns.get(i) {
            let mut len = 1u64;
            while dpfns
                .get(i.saturating_add(len as usize))
                .is_some_and(|&d| Some(d) == first.checked_add(len))
            {
                len = len.saturating_add(1);
            }
            runs.try_reserve(1).map_err(|_| Error::NoMem)?;
            runs.push(DevmemRun {
                dpfn: first,
                len,
                index: i as u64,
            });
            i = i.saturating_add(len as usize);
        }
        runs.sort_unstable_by_key(|r| r.dpfn);
        for w in runs.windows(2) {
            if let [a, b] = w {
                // A run whose end overflows reaches the last frame, `u64::MAX`: every later run
                // overlaps it (saturating here would accept a duplicate `u64::MAX`).
                if a.dpfn.checked_add(a.len).is_none_or(|end| end > b.dpfn) {
                    return Err(Error::Invalid);
                }
            }
        }
        let words = dpfns.len().div_ceil(64);
        let mut gone = Vec::new();
        gone.try_reserve_exact(words).map_err(|_| Error::NoMem)?;
        gone.resize_with(words, || AtomicU64::new(0));
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
    pub fn pagemap(&self) -> PagemapId {
        self.pagemap
    }
    /// The virtual interval it was migrated for.
    pub fn va(&self) -> (u64, u64) {
        (self.va_start, self.va_end)
    }
    /// Its device frames, in virtual-page order.
    pub fn dpfns(&self) -> &[u64] {
        &self.dpfns
    }
    /// Its runs of contiguous frames, sorted by frame.
    pub fn runs(&self) -> &[DevmemRun] {
        &self.runs
    }
    /// Number of pages still live.
    pub fn live_pages(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
    /// End of the minimum residency time (platform nanoseconds).
    pub fn timeslice_end(&self) -> u64 {
        self.timeslice_end.load(Ordering::Acquire)
    }
    /// Set the end of the minimum residency time.
    pub fn set_timeslice_end(&self, t: u64) {
        self.timeslice_end.store(t, Ordering::Release);
    }

    /// The index of `dpfn` in the allocation.
    pub fn index_of(&self, dpfn: u64) -> Option<u64> {
        let k = self.runs.partition_point(|r| r.dpfn <= dpfn);
        let r = self.runs.get(k.checked_sub(1)?)?;
        let off = dpfn.checked_sub(r.dpfn)?;
        (off < r.len).then(|| r.index.saturating_add(off))
    }

    /// Whether `dpfn` belongs to the allocation.
    pub fn contains(&self, dpfn: u64) -> bool {
        self.index_of(dpfn).is_some()
    }

    /// Whether the page `dpfn` is still live.
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
    pub fn put_page(&self, dpfn: u64) -> PutPage {
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
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            PutPage::Last
        } else {
            PutPage::Freed
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn runs_and_lookup() {
        let a = DevmemAlloc::new(PagemapId(1), 0, 0x6000, vec![10, 11, 12, 40, 41, 5]).unwrap();
        assert_eq!(a.runs().len(), 3);
        assert_eq!(a.index_of(12), Some(2));
        assert_eq!(a.index_of(41), Some(4));
        assert_eq!(a.index_of(5), Some(5));
        assert_eq!(a.index_of(13), None);
        assert_eq!(a.index_of(0), None);
        let invalid = |va_end, dpfns| DevmemAlloc::new(PagemapId(1), 0, va_end, dpfns).err();
        assert_eq!(invalid(0x1000, vec![]), Some(Error::Invalid));
        assert_eq!(invalid(0x3000, vec![1, 2, 1]), Some(Error::Invalid));
        assert_eq!(invalid(0, vec![1]), Some(Error::Invalid));
    }

    #[test]
    fn released_exactly_once() {
        let a = DevmemAlloc::new(PagemapId(1), 0, 0x3000, vec![7, 8, 100]).unwrap();
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
