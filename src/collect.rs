//! The packed collect contract: how a platform reports the CPU pages of an interval in one pass
//! ([`AddressSpace::collect_packed`](crate::platform::AddressSpace::collect_packed)).
//!
//! The crate hands the platform a [`PageSink`] over an array of 8-byte words, one per future
//! page entry. The platform walks its CPU page table once and reports each CPU mapping it meets
//! ([`push_system`](PageSink::push_system), [`push_device`](PageSink::push_device)); the sink
//! checks the page against the collection's requirements as it arrives (present, writable,
//! owner, mixed placement), splits a mapping into entries of the largest order that the
//! address, the frame and the end of the interval allow, and packs each entry into its word.
//! Under the notifier lock the crate then DMA-maps the words in place, turning each into a
//! [`PageEntry`]: the common fault touches each page once to collect it and once to map it, and
//! a 2 MiB huge page costs one word.
//!
//! ```text
//!  platform page-table walk ──push_system(pfn, order, w)──► PageSink ── word per entry ──┐
//!                           ──push_device(pm, owner, dpfn, order)──►     (checks, counts) │
//!  notifier lock (shared): seq unchanged? ── DMA map each word in place ── PageEntry[] ◄──┘
//! ```
//!
//! A platform that does not implement the packed contract keeps its
//! [`collect_pages`](crate::platform::AddressSpace::collect_pages); the crate then fills a
//! [`CpuPage`](crate::platform::CpuPage) array and feeds it to the same sink.

use crate::error::Error;
use crate::types::{OwnerId, PageEntry, PagemapId, MAX_ORDER};

/// Word layout (crate-internal; never seen by a platform or a driver):
/// bit 0 = device page, bit 1 = writable, bits 2..7 = order, bits 8..12 = pagemap slot,
/// bits 12.. = frame number.
const W_DEVICE: u64 = 1;
const W_WRITABLE: u64 = 2;
const W_ORDER_SHIFT: u32 = 2;
const W_ORDER_MASK: u64 = 0x3f;
const W_SLOT_SHIFT: u32 = 8;
const W_SLOT_MASK: u64 = 0xf;
const W_FRAME_SHIFT: u32 = 12;
/// Frames at or above this do not fit a word (2^52 frames of 4 KiB: the whole 64-bit space).
const FRAME_LIMIT: u64 = 1 << (64 - W_FRAME_SHIFT);

/// Most distinct pagemaps one collection may meet (mixed collections only).
pub const MAX_PAGEMAPS: usize = 16;

/// What a collection requires of its pages (the part of the crate's page context the sink
/// checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SinkRules {
    /// Pages must be writable.
    pub(crate) write: bool,
    /// Device pages of this owner are used in place; device pages of another are refused.
    pub(crate) owner: Option<OwnerId>,
    /// System and device pages (and several pagemaps) may mix.
    pub(crate) allow_mixed: bool,
    /// Every page must be a device page.
    pub(crate) devmem_only: bool,
}

/// One unmapped word: what the mapping pass needs to turn it into a [`PageEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Word {
    /// A system page run of `1 << order` pages from frame `pfn`.
    System {
        /// First frame.
        pfn: u64,
        /// Entry order.
        order: u8,
    },
    /// A device page run of `1 << order` pages from device frame `dpfn` of `pagemap`.
    Device {
        /// The pagemap holding it.
        pagemap: PagemapId,
        /// First device frame.
        dpfn: u64,
        /// Entry order.
        order: u8,
    },
}

/// The receiving end of [`AddressSpace::collect_packed`](crate::platform::AddressSpace::collect_packed):
/// the platform reports, in address order, the CPU mapping of each base page that no earlier
/// report covered, until [`remaining`](Self::remaining) is 0.
///
/// A report never fails: a page the collection cannot use (read-only for a write collection, a
/// device page of another owner, a second pagemap where mixing is not allowed, absent) is noted
/// and the rest of the walk is ignored; the crate reports the error once it knows that no
/// invalidation raced the walk. The platform may stop early when
/// [`remaining`](Self::remaining) reaches 0 or [`refused`](Self::refused) turns true.
#[derive(Debug)]
pub struct PageSink<'a> {
    words: &'a mut [PageEntry],
    len: usize,
    /// Next base page to report, counted from the start of the interval.
    page: u64,
    npages: u64,
    /// Page index (address >> PAGE_SHIFT) of the interval's first page.
    first_va_page: u64,
    rules: SinkRules,
    n_sys: u64,
    n_dev: u64,
    pagemaps: [PagemapId; MAX_PAGEMAPS],
    n_pagemaps: usize,
    err: Option<Error>,
}

impl<'a> PageSink<'a> {
    /// A sink for `npages` base pages from page index `first_va_page`, writing at most
    /// `words.len()` entries (`words.len() >= npages` is always enough).
    pub(crate) fn new(
        words: &'a mut [PageEntry],
        first_va_page: u64,
        npages: u64,
        rules: SinkRules,
    ) -> Self {
        PageSink {
            words,
            len: 0,
            page: 0,
            npages,
            first_va_page,
            rules,
            n_sys: 0,
            n_dev: 0,
            pagemaps: [PagemapId(0); MAX_PAGEMAPS],
            n_pagemaps: 0,
            err: None,
        }
    }

    /// Base pages still to report (0 once the interval is covered or a page was refused).
    ///
    /// Context: any; allocates nothing, takes no lock.
    #[inline]
    pub fn remaining(&self) -> u64 {
        if self.err.is_some() {
            0
        } else {
            self.npages.wrapping_sub(self.page)
        }
    }

    /// Index (from the start of the interval) of the next base page to report.
    ///
    /// Context: any; allocates nothing, takes no lock.
    #[inline]
    pub fn next_page(&self) -> u64 {
        self.page
    }

    /// Whether a page was refused (the walk may stop: the collection fails or retries).
    ///
    /// Context: any; allocates nothing, takes no lock.
    #[inline]
    pub fn refused(&self) -> bool {
        self.err.is_some()
    }

    fn refuse(&mut self, e: Error) {
        if self.err.is_none() {
            self.err = Some(e);
        }
    }

    /// Report the next base page as a system page: `pfn` is the frame of *this* base page and
    /// `order` the order of the CPU mapping it belongs to (naturally aligned in address and
    /// frame, as [`CpuPage::System`](crate::platform::CpuPage::System)); the report covers the
    /// rest of that mapping inside the interval.
    ///
    /// Context: any; allocates nothing, takes no lock.
    #[inline]
    pub fn push_system(&mut self, pfn: u64, order: u8, writable: bool) {
        if self.remaining() == 0 {
            return self.overrun();
        }
        if self.rules.write && !writable {
            return self.refuse(Error::Perm);
        }
        let flags = if writable { W_WRITABLE } else { 0 };
        if order == 0 {
            // The common case: one base page, one entry.
            if pfn >= FRAME_LIMIT {
                return self.refuse(Error::Invalid);
            }
            let Some(w) = self.words.get_mut(self.len) else {
                return self.refuse(Error::Invalid);
            };
            *w = PageEntry::from_raw((pfn << W_FRAME_SHIFT) | flags);
            self.len = self.len.wrapping_add(1);
            self.page = self.page.wrapping_add(1);
            self.n_sys = self.n_sys.wrapping_add(1);
            return;
        }
        let before = self.page;
        self.push_mapping(pfn, order, flags);
        self.n_sys = self.n_sys.wrapping_add(self.page.wrapping_sub(before));
    }

    /// Report the next `pfns.len()` base pages as system pages of order 0 (4 KiB CPU
    /// mappings), one frame each, all writable or all not: the fast form of
    /// [`push_system`](Self::push_system) for a page-table walk that reads a run of base
    /// pages. More pages than [`remaining`](Self::remaining) break the contract (the
    /// collection fails with [`Error::Invalid`]).
    ///
    /// Context: any; allocates nothing, takes no lock.
    #[inline]
    pub fn push_base_pages(&mut self, pfns: &[u64], writable: bool) {
        let n = pfns.len();
        if n == 0 {
            return;
        }
        if n as u64 > self.remaining() {
            return self.refuse(Error::Invalid);
        }
        if self.rules.write && !writable {
            return self.refuse(Error::Perm);
        }
        let flags = if writable { W_WRITABLE } else { 0 };
        let Some(out) = self
            .len
            .checked_add(n)
            .and_then(|end| self.words.get_mut(self.len..end))
        else {
            return self.refuse(Error::Invalid);
        };
        // Or-ed frames: a frame that does not fit a word sets a bit at or above the limit.
        let mut all = 0u64;
        for (w, &pfn) in out.iter_mut().zip(pfns) {
            all |= pfn;
            *w = PageEntry::from_raw((pfn << W_FRAME_SHIFT) | flags);
        }
        if all >= FRAME_LIMIT {
            return self.refuse(Error::Invalid);
        }
        self.len = self.len.wrapping_add(n);
        self.page = self.page.wrapping_add(n as u64);
        self.n_sys = self.n_sys.wrapping_add(n as u64);
    }

    /// Report the next base page as a device-private page of `pagemap` (owned by `owner`):
    /// `dpfn` is the device frame of *this* base page and `order` the order of the mapping it
    /// belongs to; the report covers the rest of that mapping inside the interval.
    ///
    /// Context: any; allocates nothing, takes no lock.
    #[inline]
    pub fn push_device(&mut self, pagemap: PagemapId, owner: OwnerId, dpfn: u64, order: u8) {
        if self.remaining() == 0 {
            return self.overrun();
        }
        if Some(owner) != self.rules.owner {
            // The platform should have migrated foreign pages to system memory.
            return self.refuse(Error::Busy);
        }
        let slot = match self.pagemaps.get(..self.n_pagemaps) {
            Some(known) => known.iter().position(|&p| p == pagemap),
            None => None,
        };
        let slot = match slot {
            Some(s) => s,
            None if self.n_pagemaps > 0 && !self.rules.allow_mixed => {
                return self.refuse(Error::NotSupported);
            }
            None => {
                let Some(p) = self.pagemaps.get_mut(self.n_pagemaps) else {
                    // More pagemaps in one range than a word can name.
                    return self.refuse(Error::NotSupported);
                };
                *p = pagemap;
                let s = self.n_pagemaps;
                self.n_pagemaps = self.n_pagemaps.wrapping_add(1);
                s
            }
        };
        let before = self.page;
        self.push_mapping(dpfn, order, W_DEVICE | ((slot as u64) << W_SLOT_SHIFT));
        self.n_dev = self.n_dev.wrapping_add(self.page.wrapping_sub(before));
    }

    /// Report the next base page as absent (a collection that faults pages in never sees one;
    /// the collection fails with [`Error::Fault`]).
    ///
    /// Context: any; allocates nothing, takes no lock.
    pub fn push_absent(&mut self) {
        if self.remaining() == 0 {
            return self.overrun();
        }
        self.refuse(Error::Fault);
    }

    /// A report past the end of the interval breaks the contract.
    #[cold]
    fn overrun(&mut self) {
        if self.err.is_none() && self.page >= self.npages {
            self.err = Some(Error::Invalid);
        }
    }

    /// The entries of the mapping of order `order` that holds the next base page (frame
    /// `frame`), up to the mapping's end or the interval's: each of the largest order the
    /// address, the frame and the pages left allow.
    fn push_mapping(&mut self, mut frame: u64, order: u8, flags: u64) {
        let order = order.min(MAX_ORDER);
        let size = 1u64 << order;
        let va = self.first_va_page.wrapping_add(self.page);
        // Base pages of the mapping from here to its end, within the interval.
        let in_mapping = size.wrapping_sub(va & size.wrapping_sub(1));
        let mut left = in_mapping.min(self.npages.wrapping_sub(self.page));
        while left > 0 {
            let va = self.first_va_page.wrapping_add(self.page);
            let o = entry_order(order, va, frame, left);
            if frame >= FRAME_LIMIT {
                return self.refuse(Error::Invalid);
            }
            let Some(w) = self.words.get_mut(self.len) else {
                return self.refuse(Error::Invalid);
            };
            *w = PageEntry::from_raw(
                (frame << W_FRAME_SHIFT) | (u64::from(o) << W_ORDER_SHIFT) | flags,
            );
            self.len = self.len.wrapping_add(1);
            let n = 1u64 << o;
            self.page = self.page.wrapping_add(n);
            frame = frame.wrapping_add(n);
            left = left.saturating_sub(n);
        }
    }

    /// What the walk found: the number of entries, or the first refusal. Also refuses a walk
    /// that left pages unreported ([`Error::Fault`]), mixed system and device pages unless
    /// allowed ([`Error::NotSupported`]) and system pages where only device pages may be
    /// ([`Error::Fault`]).
    pub(crate) fn finish(&self) -> core::result::Result<Found, Error> {
        if let Some(e) = self.err {
            return Err(e);
        }
        if self.page != self.npages {
            return Err(Error::Fault);
        }
        if self.n_dev > 0 && self.n_sys > 0 && !self.rules.allow_mixed {
            return Err(Error::NotSupported);
        }
        if self.rules.devmem_only && self.n_sys > 0 {
            return Err(Error::Fault);
        }
        Ok(Found {
            entries: self.len,
            n_sys: self.n_sys,
            n_dev: self.n_dev,
            pagemap: self
                .pagemaps
                .first()
                .copied()
                .filter(|_| self.n_pagemaps > 0),
            pagemaps: self.pagemaps,
        })
    }
}

/// What a completed walk found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    /// Number of words (entries) written.
    pub(crate) entries: usize,
    /// Base pages in system memory.
    pub(crate) n_sys: u64,
    /// Base pages in device memory.
    pub(crate) n_dev: u64,
    /// The first pagemap met.
    pub(crate) pagemap: Option<PagemapId>,
    /// The pagemaps by slot.
    pagemaps: [PagemapId; MAX_PAGEMAPS],
}

impl Found {
    /// Decode a word the walk wrote.
    #[inline]
    pub(crate) fn word(&self, w: PageEntry) -> Word {
        let raw = w.raw();
        let frame = raw >> W_FRAME_SHIFT;
        // Masked to 6 bits: the cast cannot truncate.
        let order = ((raw >> W_ORDER_SHIFT) & W_ORDER_MASK) as u8;
        if raw & W_DEVICE == 0 {
            Word::System { pfn: frame, order }
        } else {
            // Masked to 4 bits: always a slot of the table.
            let slot = ((raw >> W_SLOT_SHIFT) & W_SLOT_MASK) as usize;
            Word::Device {
                pagemap: self.pagemaps.get(slot).copied().unwrap_or(PagemapId(0)),
                dpfn: frame,
                order,
            }
        }
    }
}

/// Largest order `<= max` such that the chunk at page index `va_page` and frame `frame` is
/// aligned to it and does not run past `left` pages.
#[inline]
pub(crate) fn entry_order(max: u8, va_page: u64, frame: u64, left: u64) -> u8 {
    let mut o = max.min(MAX_ORDER);
    while o > 0 {
        let n = 1u64 << o;
        let mask = n.wrapping_sub(1);
        if va_page & mask == 0 && frame & mask == 0 && n <= left {
            return o;
        }
        o = o.wrapping_sub(1);
    }
    0
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn sink(words: &mut [PageEntry], first: u64, n: u64, rules: SinkRules) -> PageSink<'_> {
        PageSink::new(words, first, n, rules)
    }

    #[test]
    fn entry_order_respects_alignment_and_end() {
        assert_eq!(entry_order(9, 512, 1024, 512), 9);
        assert_eq!(entry_order(9, 512, 1024, 16), 4);
        assert_eq!(entry_order(9, 16, 1024 + 16, 600), 4);
        assert_eq!(entry_order(9, 513, 1025, 600), 0);
        assert_eq!(entry_order(0, 0, 0, 1), 0);
        assert_eq!(
            entry_order(9, 0, 8, 512),
            3,
            "frame alignment limits the order"
        );
        assert_eq!(entry_order(40, 0, 0, u64::MAX), MAX_ORDER);
    }

    #[test]
    fn base_and_huge_pages_pack_one_word_per_entry() {
        let mut w = [PageEntry::from_raw(0); 600];
        let rules = SinkRules {
            write: true,
            ..SinkRules::default()
        };
        // 4 base pages, then a huge page entered 8 pages before its end... start at page 508
        // of a 2 MiB-aligned block: pages 508..512 base, 512..1024 huge.
        let mut s = sink(&mut w, 508, 516, rules);
        for i in 0..4 {
            s.push_system(100 + i, 0, true);
        }
        s.push_system(2048, 9, true);
        assert_eq!(s.remaining(), 0);
        let f = s.finish().unwrap();
        assert_eq!((f.entries, f.n_sys, f.n_dev), (5, 516, 0));
        assert_eq!(f.word(w[0]), Word::System { pfn: 100, order: 0 });
        assert_eq!(
            f.word(w[4]),
            Word::System {
                pfn: 2048,
                order: 9
            }
        );
    }

    #[test]
    fn base_page_runs_pack_like_single_reports() {
        let rules = SinkRules {
            write: true,
            ..SinkRules::default()
        };
        let mut a = [PageEntry::from_raw(0); 8];
        let mut s = sink(&mut a, 0, 8, rules);
        s.push_base_pages(&[5, 9, 2], true);
        s.push_system(7, 0, true);
        s.push_base_pages(&[1, 3, 4, 6], true);
        assert_eq!(s.remaining(), 0);
        let f = s.finish().unwrap();
        let mut b = [PageEntry::from_raw(0); 8];
        let mut t = sink(&mut b, 0, 8, rules);
        for pfn in [5, 9, 2, 7, 1, 3, 4, 6] {
            t.push_system(pfn, 0, true);
        }
        assert_eq!(t.finish().unwrap().entries, f.entries);
        assert_eq!(a, b);
        // Too many pages, a read-only run for a write collection, a frame too large.
        let mut s = sink(&mut a, 0, 2, rules);
        s.push_base_pages(&[1, 2, 3], true);
        assert_eq!(s.finish().unwrap_err(), Error::Invalid);
        let mut s = sink(&mut a, 0, 2, rules);
        s.push_base_pages(&[1, 2], false);
        assert_eq!(s.finish().unwrap_err(), Error::Perm);
        let mut s = sink(&mut a, 0, 2, rules);
        s.push_base_pages(&[1, FRAME_LIMIT], true);
        assert_eq!(s.finish().unwrap_err(), Error::Invalid);
    }

    #[test]
    fn a_huge_page_entered_midway_is_split_by_alignment() {
        let mut w = [PageEntry::from_raw(0); 512];
        // The interval starts 16 pages into a huge page and covers 40 pages of it.
        let mut s = sink(&mut w, 512 + 16, 40, SinkRules::default());
        s.push_system(4096 + 16, 9, false);
        let f = s.finish().unwrap();
        let got: std::vec::Vec<Word> = w[..f.entries].iter().map(|&x| f.word(x)).collect();
        assert_eq!(
            got,
            [
                Word::System {
                    pfn: 4112,
                    order: 4
                },
                Word::System {
                    pfn: 4128,
                    order: 4
                },
                Word::System {
                    pfn: 4144,
                    order: 3
                },
            ]
        );
    }

    #[test]
    fn refusals_are_the_first_offending_page_s() {
        let mut w = [PageEntry::from_raw(0); 8];
        let rules = SinkRules {
            write: true,
            owner: Some(OwnerId(1)),
            ..SinkRules::default()
        };
        let mut s = sink(&mut w, 0, 4, rules);
        s.push_system(1, 0, true);
        s.push_system(2, 0, false);
        assert!(s.refused());
        assert_eq!(s.remaining(), 0);
        s.push_device(PagemapId(1), OwnerId(2), 0, 0);
        assert_eq!(s.finish().unwrap_err(), Error::Perm);

        let mut s = sink(&mut w, 0, 2, rules);
        s.push_device(PagemapId(1), OwnerId(2), 0, 0);
        assert_eq!(s.finish().unwrap_err(), Error::Busy);

        let mut s = sink(&mut w, 0, 2, rules);
        s.push_device(PagemapId(1), OwnerId(1), 0, 0);
        s.push_device(PagemapId(2), OwnerId(1), 0, 0);
        assert_eq!(s.finish().unwrap_err(), Error::NotSupported);

        let mut s = sink(&mut w, 0, 2, rules);
        s.push_device(PagemapId(1), OwnerId(1), 0, 0);
        s.push_system(3, 0, true);
        assert_eq!(s.finish().unwrap_err(), Error::NotSupported);

        let mixed = SinkRules {
            allow_mixed: true,
            ..rules
        };
        let mut s = sink(&mut w, 0, 3, mixed);
        s.push_device(PagemapId(1), OwnerId(1), 7, 0);
        s.push_device(PagemapId(2), OwnerId(1), 9, 0);
        s.push_system(3, 0, true);
        let f = s.finish().unwrap();
        assert_eq!((f.n_sys, f.n_dev, f.pagemap), (1, 2, Some(PagemapId(1))));
        assert_eq!(
            f.word(w[1]),
            Word::Device {
                pagemap: PagemapId(2),
                dpfn: 9,
                order: 0
            }
        );

        let only = SinkRules {
            devmem_only: true,
            ..mixed
        };
        let mut s = sink(&mut w, 0, 1, only);
        s.push_system(3, 0, true);
        assert_eq!(s.finish().unwrap_err(), Error::Fault);

        // Too few reports, an absent page, a report past the end.
        let mut s = sink(&mut w, 0, 2, rules);
        s.push_system(3, 0, true);
        assert_eq!(s.finish().unwrap_err(), Error::Fault);
        let mut s = sink(&mut w, 0, 2, rules);
        s.push_absent();
        assert_eq!(s.finish().unwrap_err(), Error::Fault);
        let mut s = sink(&mut w, 0, 1, rules);
        s.push_system(3, 0, true);
        s.push_system(4, 0, true);
        assert_eq!(s.finish().unwrap_err(), Error::Invalid);
        // A frame too large for a word.
        let mut s = sink(&mut w, 0, 1, rules);
        s.push_system(FRAME_LIMIT, 0, true);
        assert_eq!(s.finish().unwrap_err(), Error::Invalid);
        // A word array too small for the entries.
        let mut small = [PageEntry::from_raw(0); 1];
        let mut s = sink(&mut small, 0, 2, rules);
        s.push_system(3, 0, true);
        s.push_system(9, 0, true);
        assert_eq!(s.finish().unwrap_err(), Error::Invalid);
    }
}
