//! Notifiers, ranges, the ordered range tree, chunk selection and the sequence counter.
//!
//! ```text
//!  Svm ── NotifierTree (sorted HostVec by start) ── Notifier [start,end) + SeqCounter
//!                                                      └── RangeTree (intrusive RB tree by start)
//!                                                            └── HostArc<Range> [start,end) + page state
//! ```
//!
//! A [`Range`] carries its own intrusive links (one for its notifier's [`RangeTree`], one for
//! the garbage-collector queue), so inserting it anywhere allocates nothing beyond the range.
//!
//! The intrusive adapters are written by hand (`intrusive_adapter!` only knows `alloc`'s
//! `Arc`): their pointer type is [`HostArc`], converted with
//! [`heap::Arc::into_raw`](crate::heap::Arc::into_raw)/[`from_raw`](crate::heap::Arc::from_raw).
//! Their link operations never refuse a link: the crate acquires it first
//! ([`RangeTree::insert`], the GC queue push) and refuses an already-linked range itself, so
//! the collections' "already linked" panic is unreachable.

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
use crate::heap::{self, AllocCtx};
use crate::pages::PageState;
use crate::platform::PAGE_SIZE;
use crate::sync::{class, AtomicU32, AtomicU64, Mutex, Ordering};
use crate::{DefaultHost, Host, HostArc};
use bitflags::bitflags;
use core::marker::PhantomData;
use core::ptr::NonNull;
use intrusive_collections::linked_list::LinkedListOps;
use intrusive_collections::rbtree::{Color, RBTreeOps};
use intrusive_collections::{linked_list, rbtree, Adapter, KeyAdapter, LinkOps, PointerOps};

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

/// Pointer conversions of the range adapters: a [`HostArc`] to a range and back.
pub(crate) struct RangePtrOps<L: Host>(PhantomData<fn() -> L>);

impl<L: Host> RangePtrOps<L> {
    const NEW: Self = RangePtrOps(PhantomData);
}

// SAFETY: `from_raw` undoes exactly `into_raw` (the `heap::Arc` pair), neither panics, and the
// value stays alive (the collection owns the count) between the two.
unsafe impl<L: Host> PointerOps for RangePtrOps<L> {
    type Value = Range<L>;
    type Pointer = HostArc<L, Range<L>>;

    unsafe fn from_raw(&self, value: *const Range<L>) -> HostArc<L, Range<L>> {
        // SAFETY: the collections pass back only pointers `into_raw` returned (caller's
        // contract), once each.
        unsafe { heap::Arc::from_raw(value) }
    }

    fn into_raw(&self, ptr: HostArc<L, Range<L>>) -> *const Range<L> {
        heap::Arc::into_raw(ptr)
    }
}

/// Link operations over `O` whose `acquire_link` always succeeds without touching the link:
/// the crate acquires a link itself ([`acquire_tree_link`], [`acquire_gc_link`]) before it
/// hands the range to a collection, and refuses the insertion when that fails. The
/// collections' panic on an already-linked node is then unreachable, and visibly so.
#[derive(Clone, Copy, Default)]
pub(crate) struct PreAcquired<O>(O);

// SAFETY: `release_link` is `O`'s; `acquire_link` grants exclusive use of a link only to a
// collection whose caller acquired it with `O`'s operation just before (the contract of every
// insertion into a collection using these operations: `RangeTree::insert`, `gc_push`).
unsafe impl<O: LinkOps> LinkOps for PreAcquired<O> {
    type LinkPtr = O::LinkPtr;

    unsafe fn acquire_link(&mut self, _ptr: Self::LinkPtr) -> bool {
        true
    }

    unsafe fn release_link(&mut self, ptr: Self::LinkPtr) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.release_link(ptr) }
    }
}

// SAFETY: every operation is the wrapped one's.
unsafe impl RBTreeOps for PreAcquired<rbtree::AtomicLinkOps> {
    unsafe fn left(&self, ptr: Self::LinkPtr) -> Option<Self::LinkPtr> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.left(ptr) }
    }
    unsafe fn right(&self, ptr: Self::LinkPtr) -> Option<Self::LinkPtr> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.right(ptr) }
    }
    unsafe fn parent(&self, ptr: Self::LinkPtr) -> Option<Self::LinkPtr> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.parent(ptr) }
    }
    unsafe fn color(&self, ptr: Self::LinkPtr) -> Color {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.color(ptr) }
    }
    unsafe fn set_left(&mut self, ptr: Self::LinkPtr, left: Option<Self::LinkPtr>) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.set_left(ptr, left) }
    }
    unsafe fn set_right(&mut self, ptr: Self::LinkPtr, right: Option<Self::LinkPtr>) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.set_right(ptr, right) }
    }
    unsafe fn set_parent(&mut self, ptr: Self::LinkPtr, parent: Option<Self::LinkPtr>) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.set_parent(ptr, parent) }
    }
    unsafe fn set_color(&mut self, ptr: Self::LinkPtr, color: Color) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.set_color(ptr, color) }
    }
}

// SAFETY: every operation is the wrapped one's.
unsafe impl LinkedListOps for PreAcquired<linked_list::AtomicLinkOps> {
    unsafe fn next(&self, ptr: Self::LinkPtr) -> Option<Self::LinkPtr> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.next(ptr) }
    }
    unsafe fn prev(&self, ptr: Self::LinkPtr) -> Option<Self::LinkPtr> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.prev(ptr) }
    }
    unsafe fn set_next(&mut self, ptr: Self::LinkPtr, next: Option<Self::LinkPtr>) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.set_next(ptr, next) }
    }
    unsafe fn set_prev(&mut self, ptr: Self::LinkPtr, prev: Option<Self::LinkPtr>) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.set_prev(ptr, prev) }
    }
}

/// Adapter for the range tree (keyed by start address).
pub(crate) struct RangeAdapter<L: Host> {
    link_ops: PreAcquired<rbtree::AtomicLinkOps>,
    ptr_ops: RangePtrOps<L>,
}

impl<L: Host> RangeAdapter<L> {
    /// The adapter (zero-sized).
    pub(crate) const NEW: Self = RangeAdapter {
        link_ops: PreAcquired(rbtree::AtomicLinkOps),
        ptr_ops: RangePtrOps::NEW,
    };
}

// SAFETY: `get_link`/`get_value` move between a range and its `tree_link` field by the
// field's offset, within the same allocation (so the pointer keeps its provenance); the
// pointer operations are the `HostArc` pair.
unsafe impl<L: Host> Adapter for RangeAdapter<L> {
    type LinkOps = PreAcquired<rbtree::AtomicLinkOps>;
    type PointerOps = RangePtrOps<L>;

    unsafe fn get_value(&self, link: NonNull<rbtree::AtomicLink>) -> *const Range<L> {
        let off = core::mem::offset_of!(Range<L>, tree_link);
        // SAFETY: `link` is the `tree_link` field of a live range (caller's contract).
        unsafe { link.as_ptr().cast::<u8>().sub(off).cast::<Range<L>>() }
    }

    unsafe fn get_link(&self, value: *const Range<L>) -> NonNull<rbtree::AtomicLink> {
        // SAFETY: `value` points to a live range (caller's contract): its field address is
        // non-null.
        unsafe { NonNull::new_unchecked(core::ptr::addr_of!((*value).tree_link).cast_mut()) }
    }

    fn link_ops(&self) -> &Self::LinkOps {
        &self.link_ops
    }

    fn link_ops_mut(&mut self) -> &mut Self::LinkOps {
        &mut self.link_ops
    }

    fn pointer_ops(&self) -> &Self::PointerOps {
        &self.ptr_ops
    }
}

impl<'a, L: Host> KeyAdapter<'a> for RangeAdapter<L> {
    type Key = u64;
    fn get_key(&self, r: &'a Range<L>) -> u64 {
        r.start
    }
}

/// Adapter for the garbage-collector queue.
pub(crate) struct GcAdapter<L: Host> {
    link_ops: PreAcquired<linked_list::AtomicLinkOps>,
    ptr_ops: RangePtrOps<L>,
}

impl<L: Host> GcAdapter<L> {
    /// The adapter (zero-sized).
    pub(crate) const NEW: Self = GcAdapter {
        link_ops: PreAcquired(linked_list::AtomicLinkOps),
        ptr_ops: RangePtrOps::NEW,
    };
}

// SAFETY: as `RangeAdapter`, for the `gc_link` field.
unsafe impl<L: Host> Adapter for GcAdapter<L> {
    type LinkOps = PreAcquired<linked_list::AtomicLinkOps>;
    type PointerOps = RangePtrOps<L>;

    unsafe fn get_value(&self, link: NonNull<linked_list::AtomicLink>) -> *const Range<L> {
        let off = core::mem::offset_of!(Range<L>, gc_link);
        // SAFETY: `link` is the `gc_link` field of a live range (caller's contract).
        unsafe { link.as_ptr().cast::<u8>().sub(off).cast::<Range<L>>() }
    }

    unsafe fn get_link(&self, value: *const Range<L>) -> NonNull<linked_list::AtomicLink> {
        // SAFETY: `value` points to a live range (caller's contract).
        unsafe { NonNull::new_unchecked(core::ptr::addr_of!((*value).gc_link).cast_mut()) }
    }

    fn link_ops(&self) -> &Self::LinkOps {
        &self.link_ops
    }

    fn link_ops_mut(&mut self) -> &mut Self::LinkOps {
        &mut self.link_ops
    }

    fn pointer_ops(&self) -> &Self::PointerOps {
        &self.ptr_ops
    }
}

/// Acquire `range`'s tree link for an insertion (atomically: a range is linked into at most
/// one tree); whether it was free.
pub(crate) fn acquire_tree_link<L: Host>(range: &Range<L>) -> bool {
    // SAFETY: the link lives as long as `range`; acquiring only swaps its atomic marker.
    unsafe { rbtree::AtomicLinkOps.acquire_link(NonNull::from(&range.tree_link)) }
}

/// Acquire `range`'s GC-queue link (atomically); whether it was free.
fn acquire_gc_link<L: Host>(range: &Range<L>) -> bool {
    // SAFETY: as `acquire_tree_link`.
    unsafe { linked_list::AtomicLinkOps.acquire_link(NonNull::from(&range.gc_link)) }
}

/// The garbage-collector queue: an intrusive list of ranges (pushing allocates nothing).
pub(crate) type GcQueue<L> = intrusive_collections::LinkedList<GcAdapter<L>>;

/// An empty GC queue.
pub(crate) const fn gc_queue<L: Host>() -> GcQueue<L> {
    intrusive_collections::LinkedList::new(GcAdapter::NEW)
}

/// Queue `range` at the back of `q`; `false` (and the reference is dropped) if it is already
/// in a queue.
///
/// Context: allocates nothing; never sleeps (the invalidation path calls it under the GC-queue
/// lock).
pub(crate) fn gc_push<L: Host>(q: &mut GcQueue<L>, range: HostArc<L, Range<L>>) -> bool {
    if !acquire_gc_link(&range) {
        return false;
    }
    // The link was just acquired: the list's own acquisition (`PreAcquired`) cannot refuse it.
    q.push_back(range);
    true
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
    /// [`Error::NoMem`] if the host's allocator fails (nothing is created).
    ///
    /// Context: may sleep: allocates the range from `L::Alloc` with [`AllocCtx::MaySleep`],
    /// so no spinning lock may be held; takes no lock.
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
                pages: Mutex::new(&class::RANGE_PAGES, PageState::new()),
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
    use super::*;

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
