//! Notifiers, ranges, the ordered range tree, chunk selection and the sequence counter.
//!
//! ```text
//!  Svm ── NotifierTree (BTreeMap by start) ── Notifier [start,end) + SeqCounter
//!                                                 └── RangeTree (intrusive RB tree by start)
//!                                                       └── Arc<Range> [start,end) + page state
//! ```
//!
//! A [`Range`] carries its own intrusive links (one for its notifier's [`RangeTree`], one for
//! the garbage-collector queue), so inserting it anywhere allocates nothing beyond the range.

mod chunk;
mod notifier;
mod seq;
mod tree;

pub(crate) use chunk::check_chunk_sizes;
pub use chunk::{select_chunk, ChunkQuery};
pub(crate) use notifier::{Notifier, NotifierTree};
pub use seq::SeqCounter;
pub use tree::{Overlapping, RangeTree};

use crate::error::{Error, Result};
use crate::pages::PageState;
use crate::platform::PAGE_SIZE;
use crate::sync::{class, AtomicU32, AtomicU64, Mutex, Ordering};
use crate::{DefaultHost, Host};
use alloc::sync::Arc;
use bitflags::bitflags;
use intrusive_collections::{intrusive_adapter, linked_list, rbtree, KeyAdapter};

bitflags! {
    /// Life-cycle flags of a [`Range`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RangeFlags: u32 {
        /// The CPU unmapped (part of) the range; it waits for the garbage collector.
        const UNMAPPED = 1;
        /// Only part of the range was unmapped.
        const PARTIAL_UNMAP = 2;
        /// The range is in the garbage-collector queue.
        const IN_GC = 4;
        /// The range was removed from its tree; it can no longer be used.
        const REMOVED = 8;
        /// A migration to device memory was tried for this range and failed ("migrate once").
        const MIGRATE_FAILED = 16;
        /// The range was migrated to device memory (and not evicted since).
        const DEVMEM = 32;
    }
}

/// One range `[start, end)` of a notifier: the unit of faulting, mapping and migration.
///
/// Ranges are shared as `Arc<Range>`; the tree, the GC queue and the driver each hold a
/// reference. The bounds never change; the page state is behind the range's own lock, which is
/// only taken with the notifier lock held (lock order: structure lock → notifier lock → range).
pub struct Range<L: Host = DefaultHost> {
    tree_link: rbtree::AtomicLink,
    gc_link: linked_list::AtomicLink,
    start: u64,
    end: u64,
    flags: AtomicU32,
    /// Platform time of the last migration into device memory (eviction picks the oldest).
    placed_ns: AtomicU64,
    pub(crate) pages: Mutex<L, PageState>,
}

intrusive_adapter!(
    /// Adapter for the range tree (keyed by start address).
    pub(crate) RangeAdapter<L> = Arc<Range<L>>: Range<L> { tree_link => rbtree::AtomicLink } where L: Host
);
impl<'a, L: Host> KeyAdapter<'a> for RangeAdapter<L> {
    type Key = u64;
    fn get_key(&self, r: &'a Range<L>) -> u64 {
        r.start
    }
}
intrusive_adapter!(
    /// Adapter for the garbage-collector queue.
    pub(crate) GcAdapter<L> = Arc<Range<L>>: Range<L> { gc_link => linked_list::AtomicLink } where L: Host
);

impl<L: Host> core::fmt::Debug for Range<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Range")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("flags", &self.flags())
            .finish_non_exhaustive()
    }
}

impl Range {
    /// A new, unlinked range over `[start, end)`.
    ///
    /// Errors: [`Error::Invalid`] unless `start < end` and both are page aligned.
    ///
    /// ```
    /// use gpusvm::range::Range;
    /// assert!(Range::new(0x1000, 0x3000).is_ok());
    /// assert_eq!(Range::new(0x1000, 0x1000).unwrap_err(), gpusvm::Error::Invalid);
    /// assert_eq!(Range::new(0x1001, 0x3000).unwrap_err(), gpusvm::Error::Invalid);
    /// ```
    pub fn new(start: u64, end: u64) -> Result<Arc<Range>> {
        Self::with_host(start, end)
    }
}

impl<L: Host> Range<L> {
    /// A new, unlinked range over `[start, end)` whose page-state lock comes from the facet
    /// `L` (the fault service creates its ranges with the platform's facet).
    ///
    /// Errors: [`Error::Invalid`] unless `start < end` and both are page aligned.
    ///
    /// Context: allocates the range (global allocator); does not sleep; takes no lock.
    pub fn with_host(start: u64, end: u64) -> Result<Arc<Range<L>>> {
        if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(Error::Invalid);
        }
        Ok(Arc::new(Range {
            tree_link: rbtree::AtomicLink::new(),
            gc_link: linked_list::AtomicLink::new(),
            start,
            end,
            flags: AtomicU32::new(0),
            placed_ns: AtomicU64::new(0),
            pages: Mutex::new(&class::RANGE_PAGES, PageState::new()),
        }))
    }

    /// First byte.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.end
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.end.wrapping_sub(self.start)
    }
    /// Number of base pages.
    pub fn npages(&self) -> u64 {
        self.size() / PAGE_SIZE
    }
    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    /// Whether the range overlaps `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
    /// Whether the range is linked into a tree.
    pub fn is_linked(&self) -> bool {
        self.tree_link.is_linked()
    }
    /// The current life-cycle flags.
    pub fn flags(&self) -> RangeFlags {
        RangeFlags::from_bits_truncate(self.flags.load(Ordering::Acquire))
    }
    /// Platform time of the last migration of the range into device memory (0: never).
    pub fn placed_ns(&self) -> u64 {
        self.placed_ns.load(Ordering::Relaxed)
    }
    pub(crate) fn set_placed_ns(&self, t: u64) {
        self.placed_ns.store(t, Ordering::Relaxed);
    }
    pub(crate) fn set_flags(&self, f: RangeFlags) -> RangeFlags {
        RangeFlags::from_bits_truncate(self.flags.fetch_or(f.bits(), Ordering::AcqRel))
    }
    pub(crate) fn clear_flags(&self, f: RangeFlags) -> RangeFlags {
        RangeFlags::from_bits_truncate(self.flags.fetch_and(!f.bits(), Ordering::AcqRel))
    }
}
