//! Notifiers, ranges, the per-notifier range index (and the general-purpose range tree), chunk
//! selection and the sequence counter.
//!
//! ```text
//!  Svm ── NotifierTree (sorted HostVec by start) ── Notifier [start,end) + SeqCounter
//!                                                      │   + its lock (class NOTIFIER)
//!                                                      └── RangeIndex (slot table of sorted arrays)
//!                                                            └── HostArc<Range> [start,end) + page state
//! ```
//!
//! A [`Range`] carries its own intrusive links (one for a [`RangeTree`] — or, as a flag, for its
//! notifier's [`RangeIndex`] — one for
//! the garbage-collector queue), so inserting it anywhere allocates nothing beyond the range.
//!
//! The intrusive adapters are written by hand (`intrusive_adapter!` only knows `alloc`'s
//! `Arc`): their pointer type is [`HostArc`], converted with
//! [`heap::Arc::into_raw`](crate::heap::Arc::into_raw)/[`from_raw`](crate::heap::Arc::from_raw).
//! Their link operations never refuse a link: the crate acquires it first
//! ([`RangeTree::insert`], the GC queue push) and refuses an already-linked range itself, so
//! the collections' "already linked" panic is unreachable.

mod chunk;
mod index;
mod link;
mod notifier;
mod tree;

pub use crate::sync::SeqCounter;
pub(crate) use chunk::check_chunk_sizes;
pub use chunk::{select_chunk, ChunkQuery};
pub use index::{slot_size_for, IndexOverlapping, IndexSpare, RangeIndex};
pub(crate) use link::{acquire_tree_link, gc_push, gc_queue, GcQueue, RangeAdapter};
pub(crate) use notifier::{Notifier, NotifierTree};
pub use tree::{Overlapping, RangeTree};

use crate::error::{Error, Result};
use crate::heap::{self, AllocCtx};
use crate::pages::PageState;
use crate::platform::PAGE_SIZE;
use crate::sync::{class, AtomicU32, AtomicU64, Mutex, Ordering};
use crate::{DefaultHost, Host, HostArc};
use bitflags::bitflags;
use intrusive_collections::{linked_list, rbtree};

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

/// A shared reference to a [`Range`] of host `L`, on `L`'s allocator: what the tree, the GC
/// queue and the driver hold.
pub type RangeArc<L = DefaultHost> = HostArc<L, Range<L>>;

/// One range `[start, end)` of a notifier: the unit of faulting, mapping and migration.
///
/// Ranges are shared as [`HostArc<L, Range<L>>`](HostArc); the tree, the GC queue and the driver
/// each hold a
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
    pub(crate) pages: Mutex<L, PageState<L>>,
}

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
    /// A new, unlinked range over `[start, end)` on the default host.
    ///
    /// Errors: [`Error::Invalid`] unless `start < end` and both are page aligned;
    /// [`Error::NoMem`] if the allocator fails.
    ///
    /// Context: may sleep (allocates the range with [`AllocCtx::MaySleep`]); takes no lock.
    ///
    /// ```
    /// use gpusvm::range::Range;
    /// assert!(Range::new(0x1000, 0x3000).is_ok());
    /// assert_eq!(Range::new(0x1000, 0x1000).unwrap_err(), gpusvm::Error::Invalid);
    /// assert_eq!(Range::new(0x1001, 0x3000).unwrap_err(), gpusvm::Error::Invalid);
    /// ```
    pub fn new(start: u64, end: u64) -> Result<HostArc<DefaultHost, Range>> {
        Self::with_host(start, end)
    }
}

impl<L: Host> Range<L> {
    /// A new, unlinked range over `[start, end)` whose page-state lock and memory come from
    /// the host `L` (the fault service creates its ranges with the platform's host).
    ///
    /// Errors: [`Error::Invalid`] unless `start < end` and both are page aligned;
    /// [`Error::NoMem`] if the host's allocator fails or it cannot create the page-state lock
    /// (nothing is created).
    ///
    /// Context: may sleep: creates the page-state lock (see
    /// [`RawMutex::new`](crate::sync::RawMutex::new)) and allocates the range from `L::Alloc`
    /// with [`AllocCtx::MaySleep`], so no spinning lock and no lock of the invalidation path
    /// may be held; takes no lock.
    pub fn with_host(start: u64, end: u64) -> Result<HostArc<L, Range<L>>> {
        if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(Error::Invalid);
        }
        heap::Arc::try_new(
            Range {
                tree_link: rbtree::AtomicLink::new(),
                gc_link: linked_list::AtomicLink::new(),
                start,
                end,
                flags: AtomicU32::new(0),
                placed_ns: AtomicU64::new(0),
                pages: Mutex::new(&class::RANGE_PAGES, PageState::new())?,
            },
            AllocCtx::MaySleep,
        )
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
    /// Size in bytes.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn size(&self) -> u64 {
        self.end.wrapping_sub(self.start)
    }
    /// Number of base pages.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn npages(&self) -> u64 {
        self.size() / PAGE_SIZE
    }
    /// Whether `addr` lies in the range.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    /// Whether the range overlaps `[start, end)`.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
    /// Whether the range is linked into a tree.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn is_linked(&self) -> bool {
        self.tree_link.is_linked()
    }
    /// The current life-cycle flags.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn flags(&self) -> RangeFlags {
        RangeFlags::from_bits_truncate(self.flags.load(Ordering::Acquire))
    }
    /// Platform time of the last migration of the range into device memory (0: never).
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
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

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use super::link::acquire_gc_link;
    use super::*;
    use core::ptr::NonNull;
    use intrusive_collections::LinkOps;

    const P: u64 = PAGE_SIZE;

    /// The GC queue holds one reference per queued range, refuses a range already queued
    /// (without touching the queue), and gives the references back on pop and on drop.
    #[test]
    fn gc_queue_push_pop_and_refusal() {
        let a = Range::new(0, P).unwrap();
        let b = Range::new(P, 2 * P).unwrap();
        let mut q = gc_queue::<DefaultHost>();
        assert!(gc_push(&mut q, a.clone()));
        assert!(gc_push(&mut q, b.clone()));
        assert_eq!(heap::Arc::strong_count(&a), 2);
        // Already queued: refused, the extra reference dropped.
        assert!(!gc_push(&mut q, a.clone()));
        assert_eq!(heap::Arc::strong_count(&a), 2);
        assert_eq!(q.iter().count(), 2);
        let first = q.pop_front().unwrap();
        assert!(heap::Arc::ptr_eq(&first, &a));
        drop(first);
        assert_eq!(heap::Arc::strong_count(&a), 1);
        // Unlinked again: it may be queued once more.
        assert!(gc_push(&mut q, a.clone()));
        drop(q);
        assert_eq!(heap::Arc::strong_count(&a), 1);
        assert_eq!(heap::Arc::strong_count(&b), 1);
        assert!(acquire_gc_link(&a), "dropping the queue unlinked the range");
        // SAFETY: the link was just acquired by this test and is not in any list.
        unsafe {
            linked_list::AtomicLinkOps.release_link(NonNull::from(&a.gc_link));
        }
    }

    /// A range linked in one tree is refused by another (which stays unchanged), and a tree
    /// and a queue hold the same range independently; dropping the tree releases its
    /// references and unlinks.
    #[test]
    fn tree_link_is_exclusive_and_released_on_drop() {
        let r = Range::new(4 * P, 6 * P).unwrap();
        let mut t1 = RangeTree::new();
        let mut t2 = RangeTree::new();
        t1.insert(r.clone()).unwrap();
        assert!(r.is_linked());
        assert_eq!(t2.insert(r.clone()), Err(Error::Invalid));
        assert!(t2.is_empty());
        assert_eq!(heap::Arc::strong_count(&r), 2);
        let mut q = gc_queue::<DefaultHost>();
        assert!(gc_push(&mut q, r.clone()));
        assert_eq!(heap::Arc::strong_count(&r), 3);
        drop(t1);
        assert!(!r.is_linked());
        assert_eq!(heap::Arc::strong_count(&r), 2);
        t2.insert(r.clone()).unwrap();
        assert_eq!(t2.find_arc(5 * P).map(|x| x.start()), Some(4 * P));
        drop(q);
        let back = t2.remove(&r).unwrap();
        assert!(heap::Arc::ptr_eq(&back, &r));
        drop(back);
        assert_eq!(heap::Arc::strong_count(&r), 1);
    }
}
