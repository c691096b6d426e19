//! The intrusive adapters of a range's two links (range tree, GC queue) over
//! [`HostArc`](crate::HostArc), written by hand because `intrusive_adapter!` only knows
//! `alloc`'s `Arc`. Their link operations never refuse a link: the crate acquires it first
//! ([`acquire_tree_link`] in `RangeTree::insert`, [`gc_push`]) and refuses an already-linked
//! range itself, so the collections' "already linked" panic is unreachable (and the link-time
//! panic proof sees that).

use super::Range;
use crate::{heap, Host, HostArc};
use core::marker::PhantomData;
use core::ptr::NonNull;
use intrusive_collections::linked_list::LinkedListOps;
use intrusive_collections::rbtree::{Color, RBTreeOps};
use intrusive_collections::{linked_list, rbtree, Adapter, KeyAdapter, LinkOps, PointerOps};

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

/// An adapter between a range link field and `HostArc<L, Range<L>>`: the struct, its
/// zero-sized constant and the `Adapter` impl (moving between a range and its link field by
/// the field's offset, within the same allocation, so the pointer keeps its provenance).
macro_rules! range_adapter {
    ($(#[$doc:meta])* $name:ident, $field:ident, $link:ident) => {
        $(#[$doc])*
        pub(crate) struct $name<L: Host> {
            link_ops: PreAcquired<$link::AtomicLinkOps>,
            ptr_ops: RangePtrOps<L>,
        }

        impl<L: Host> $name<L> {
            /// The adapter (zero-sized).
            pub(crate) const NEW: Self = $name {
                link_ops: PreAcquired($link::AtomicLinkOps),
                ptr_ops: RangePtrOps::NEW,
            };
        }

        // SAFETY: `get_link`/`get_value` move between a range and its link field by the
        // field's offset, within the same allocation; the pointer operations are the
        // `HostArc` pair.
        unsafe impl<L: Host> Adapter for $name<L> {
            type LinkOps = PreAcquired<$link::AtomicLinkOps>;
            type PointerOps = RangePtrOps<L>;

            unsafe fn get_value(&self, link: NonNull<$link::AtomicLink>) -> *const Range<L> {
                let off = core::mem::offset_of!(Range<L>, $field);
                // SAFETY: `link` is the link field of a live range (caller's contract).
                unsafe { link.as_ptr().cast::<u8>().sub(off).cast::<Range<L>>() }
            }

            unsafe fn get_link(&self, value: *const Range<L>) -> NonNull<$link::AtomicLink> {
                // SAFETY: `value` points to a live range (caller's contract): its field
                // address is non-null.
                unsafe { NonNull::new_unchecked(core::ptr::addr_of!((*value).$field).cast_mut()) }
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
    };
}

range_adapter!(
    /// Adapter for the range tree (keyed by start address).
    RangeAdapter,
    tree_link,
    rbtree
);

impl<'a, L: Host> KeyAdapter<'a> for RangeAdapter<L> {
    type Key = u64;
    fn get_key(&self, r: &'a Range<L>) -> u64 {
        r.start
    }
}

range_adapter!(
    /// Adapter for the garbage-collector queue.
    GcAdapter,
    gc_link,
    linked_list
);

/// Acquire `range`'s tree link for an insertion (atomically: a range is linked into at most
/// one tree); whether it was free.
pub(crate) fn acquire_tree_link<L: Host>(range: &Range<L>) -> bool {
    // SAFETY: the link lives as long as `range`; acquiring only swaps its atomic marker.
    unsafe { rbtree::AtomicLinkOps.acquire_link(NonNull::from(&range.tree_link)) }
}

/// Release `range`'s tree link, which [`acquire_tree_link`] acquired for a collection that
/// keeps the range without threading the link (the flat [`RangeIndex`](super::RangeIndex)),
/// when the range leaves that collection: it may then be linked again.
///
/// Only for such a link: releasing the link of a range that sits in a
/// [`RangeTree`](super::RangeTree) would let a second tree take it over.
pub(crate) fn release_tree_link<L: Host>(range: &Range<L>) {
    // SAFETY: releasing only stores the "unlinked" marker into the link's atomic word; the link
    // lives as long as `range`. The caller (the range index) releases only a link it acquired
    // and never threaded into a tree, so no tree's structure depends on the link's pointers.
    unsafe { rbtree::AtomicLinkOps.release_link(NonNull::from(&range.tree_link)) }
}

/// Acquire `range`'s GC-queue link (atomically); whether it was free.
pub(super) fn acquire_gc_link<L: Host>(range: &Range<L>) -> bool {
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
