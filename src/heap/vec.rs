//! [`Vec`]: a growable array whose growth is fallible and takes an allocation context.

use super::{AllocCtx, Allocator};
use crate::{Error, Result};
use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem::{self, ManuallyDrop};
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

/// A contiguous growable array on the allocator `A`.
///
/// Every method that may allocate takes an [`AllocCtx`] and returns
/// [`Error::NoMem`](crate::Error::NoMem) (the vector unchanged) when the allocator fails;
/// `*_within_capacity` methods never allocate, for use under locks the invalidation path
/// takes (reserve first, outside the lock). Dereferences to a slice.
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpusvm::heap::{AllocCtx, Global, Vec};
/// let mut v: Vec<u32, Global> = Vec::new();
/// v.push(1, AllocCtx::MaySleep)?;
/// v.reserve(1, AllocCtx::MaySleep)?;
/// v.push_within_capacity(2).map_err(|_| gpusvm::Error::NoMem)?;
/// assert_eq!(&v[..], &[1, 2]);
/// # }
/// # Ok::<(), gpusvm::Error>(())
/// ```
pub struct Vec<T, A: Allocator> {
    ptr: NonNull<T>,
    len: usize,
    cap: usize,
    _owns: PhantomData<(T, A)>,
}

// SAFETY: a `Vec` owns its elements like the standard library's `Vec`; the allocator is a type-level
// facet whose functions may be called from any thread.
unsafe impl<T: Send, A: Allocator> Send for Vec<T, A> {}
// SAFETY: shared access gives only `&T`.
unsafe impl<T: Sync, A: Allocator> Sync for Vec<T, A> {}

impl<T, A: Allocator> Vec<T, A> {
    const ZST: bool = mem::size_of::<T>() == 0;

    /// An empty vector; allocates nothing.
    ///
    /// Context: any; never allocates.
    pub const fn new() -> Self {
        Vec {
            ptr: NonNull::dangling(),
            len: 0,
            cap: if Self::ZST { usize::MAX } else { 0 },
            _owns: PhantomData,
        }
    }

    /// An empty vector with room for `n` elements.
    ///
    /// Errors: [`Error::NoMem`] when the allocator fails or the size overflows.
    ///
    /// Context: allocates with `ctx`.
    pub fn with_capacity(n: usize, ctx: AllocCtx) -> Result<Self> {
        let mut v = Self::new();
        v.reserve(n, ctx)?;
        Ok(v)
    }

    /// Number of elements.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of elements that fit without allocating.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Room for `additional` more elements without allocating (`len + additional <=
    /// capacity`). Grows to at least twice the capacity when it must grow.
    ///
    /// Errors: [`Error::NoMem`] when the allocator fails or the size overflows; the vector
    /// is unchanged.
    ///
    /// Context: allocates with `ctx` only if the capacity is too small.
    pub fn reserve(&mut self, additional: usize, ctx: AllocCtx) -> Result<()> {
        let need = self.len.checked_add(additional).ok_or(Error::NoMem)?;
        if need <= self.cap {
            return Ok(());
        }
        let doubled = self.cap.checked_mul(2).unwrap_or(need);
        self.grow_to(need.max(doubled).max(4), ctx)
    }

    /// Room for exactly `additional` more elements (no doubling).
    ///
    /// Errors: as [`reserve`](Self::reserve).
    ///
    /// Context: allocates with `ctx` only if the capacity is too small.
    pub fn reserve_exact(&mut self, additional: usize, ctx: AllocCtx) -> Result<()> {
        let need = self.len.checked_add(additional).ok_or(Error::NoMem)?;
        if need <= self.cap {
            return Ok(());
        }
        self.grow_to(need, ctx)
    }

    fn grow_to(&mut self, cap: usize, ctx: AllocCtx) -> Result<()> {
        // ZSTs have capacity usize::MAX and never get here.
        let layout = Layout::array::<T>(cap).map_err(|_| Error::NoMem)?;
        let new = A::allocate(layout, ctx)?.cast::<T>();
        if self.cap > 0 {
            // SAFETY: the old buffer holds `len` initialised elements; the new one has room
            // for `cap >= len` and does not overlap it. The old buffer was allocated with
            // `Layout::array::<T>(self.cap)`, which succeeded then.
            unsafe {
                ptr::copy_nonoverlapping(self.ptr.as_ptr(), new.as_ptr(), self.len);
                let old = Layout::array::<T>(self.cap).map_err(|_| Error::NoMem)?;
                A::deallocate(self.ptr.cast(), old);
            }
        }
        self.ptr = new;
        self.cap = cap;
        Ok(())
    }

    /// Append `value`, growing if needed.
    ///
    /// Errors: [`Error::NoMem`] (the vector unchanged, `value` dropped).
    ///
    /// Context: allocates with `ctx` only if the capacity is too small.
    pub fn push(&mut self, value: T, ctx: AllocCtx) -> Result<()> {
        self.reserve(1, ctx)?;
        self.push_within_capacity(value).map_err(|_| Error::NoMem)
    }

    /// Append `value` if there is room; never allocates. Gives `value` back when full.
    ///
    /// Context: any; never allocates.
    pub fn push_within_capacity(&mut self, value: T) -> core::result::Result<(), T> {
        if self.len >= self.cap {
            return Err(value);
        }
        // SAFETY: `len < cap`: the slot is inside the buffer and uninitialised.
        unsafe { self.ptr.as_ptr().add(self.len).write(value) };
        self.len = self.len.wrapping_add(1);
        Ok(())
    }

    /// Insert `value` at `index`, shifting the tail up; never allocates. Gives `value` back
    /// when full or when `index > len`.
    ///
    /// Context: any; never allocates.
    pub fn insert_within_capacity(
        &mut self,
        index: usize,
        value: T,
    ) -> core::result::Result<(), T> {
        if self.len >= self.cap || index > self.len {
            return Err(value);
        }
        // SAFETY: `index <= len < cap`: the shifted tail `[index, len)` moves to
        // `[index + 1, len + 1)`, inside the buffer; the slot at `index` is then written.
        unsafe {
            let at = self.ptr.as_ptr().add(index);
            ptr::copy(at, at.add(1), self.len.wrapping_sub(index));
            at.write(value);
        }
        self.len = self.len.wrapping_add(1);
        Ok(())
    }

    /// Insert `value` at `index`, growing if needed.
    ///
    /// Errors: [`Error::Invalid`] when `index > len`; [`Error::NoMem`]. The vector is
    /// unchanged on error.
    ///
    /// Context: allocates with `ctx` only if the capacity is too small.
    pub fn insert(&mut self, index: usize, value: T, ctx: AllocCtx) -> Result<()> {
        if index > self.len {
            return Err(Error::Invalid);
        }
        self.reserve(1, ctx)?;
        self.insert_within_capacity(index, value)
            .map_err(|_| Error::NoMem)
    }

    /// Remove and return the last element.
    ///
    /// Context: any; never allocates, never sleeps (drops nothing).
    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len = self.len.wrapping_sub(1);
        // SAFETY: the slot at the old `len - 1` is initialised and now outside `len`.
        Some(unsafe { self.ptr.as_ptr().add(self.len).read() })
    }

    /// Remove and return the element at `index`, shifting the tail down; `None` when out of
    /// bounds.
    ///
    /// Context: any; never allocates, never sleeps.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        if index >= self.len {
            return None;
        }
        // SAFETY: `index < len`: read the element, then move `[index + 1, len)` down by one.
        unsafe {
            let at = self.ptr.as_ptr().add(index);
            let v = at.read();
            ptr::copy(at.add(1), at, self.len.wrapping_sub(index).wrapping_sub(1));
            self.len = self.len.wrapping_sub(1);
            Some(v)
        }
    }

    /// Remove and return the element at `index`, moving the last one into its place; `None`
    /// when out of bounds.
    ///
    /// Context: any; never allocates, never sleeps.
    pub fn swap_remove(&mut self, index: usize) -> Option<T> {
        if index >= self.len {
            return None;
        }
        let last = self.len.wrapping_sub(1);
        self.as_mut_slice().swap(index, last);
        self.pop()
    }

    /// Drop the elements from `len` on (no effect when `len >= self.len()`).
    ///
    /// Context: as the elements' `Drop`; never allocates (the capacity is kept).
    pub fn truncate(&mut self, len: usize) {
        while self.len > len {
            drop(self.pop());
        }
    }

    /// Drop every element; keeps the capacity.
    ///
    /// Context: as the elements' `Drop`; never allocates (the capacity is kept).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keep only the elements for which `keep` returns true, in order.
    ///
    /// Context: as `keep` and the elements' `Drop`; never allocates.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut i = 0;
        while i < self.len {
            // SAFETY: `i < len`.
            let k = keep(unsafe { &*self.ptr.as_ptr().add(i) });
            if k {
                i = i.wrapping_add(1);
            } else {
                drop(self.remove(i));
            }
        }
    }

    /// Remove the elements in `[from, to)` (clamped to the length), shifting the tail down.
    ///
    /// Context: as the elements' `Drop`; never allocates.
    pub fn remove_range(&mut self, from: usize, to: usize) {
        let to = to.min(self.len);
        if from >= to {
            return;
        }
        let tail = self.len.wrapping_sub(to);
        // SAFETY: `from < to <= len`: the removed elements are dropped in place, then the tail
        // `[to, len)` moves down to `from`; `len` is set before anything can observe it.
        unsafe {
            let base = self.ptr.as_ptr();
            let old_len = self.len;
            self.len = from;
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(
                base.add(from),
                to.wrapping_sub(from),
            ));
            ptr::copy(base.add(to), base.add(from), tail);
            self.len = old_len.wrapping_sub(to.wrapping_sub(from));
        }
    }

    /// The elements as a slice.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `[0, len)` is initialised; the pointer is dangling-but-aligned when empty.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The elements as a mutable slice.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as `as_slice`, and `&mut self` is exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Append clones of every element of `items`.
    ///
    /// Errors: [`Error::NoMem`]; the vector is unchanged.
    ///
    /// Context: allocates with `ctx` only if the capacity is too small.
    pub fn extend_from_slice(&mut self, items: &[T], ctx: AllocCtx) -> Result<()>
    where
        T: Clone,
    {
        self.reserve(items.len(), ctx)?;
        let mut it = items.iter();
        let n = self.len.wrapping_add(items.len());
        self.fill_to(n, || it.next().cloned());
        // Every item was taken: `fill_to` wrote exactly `items.len()` of them.
        Ok(())
    }

    /// Append every item of `items`, growing as needed.
    ///
    /// Errors: [`Error::NoMem`]; the items appended before the failure are removed again.
    ///
    /// Context: allocates with `ctx`.
    pub fn extend(&mut self, items: impl IntoIterator<Item = T>, ctx: AllocCtx) -> Result<()> {
        let before = self.len;
        for it in items {
            if let Err(e) = self.push(it, ctx) {
                self.truncate(before);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Set the length to `n`, appending clones of `value` or dropping the tail.
    ///
    /// Errors: [`Error::NoMem`]; the vector is unchanged.
    ///
    /// Context: allocates with `ctx` only if the capacity is too small.
    pub fn resize(&mut self, n: usize, value: T, ctx: AllocCtx) -> Result<()>
    where
        T: Clone,
    {
        if n <= self.len {
            self.truncate(n);
            return Ok(());
        }
        self.reserve(n.wrapping_sub(self.len), ctx)?;
        self.fill_to(n, || Some(value.clone()));
        Ok(())
    }

    /// Write `next()` into the slots from `len` to `n` (`n <= capacity`, checked by the
    /// callers' reservation) and set the length: one tight loop without a capacity check per
    /// element. A `None` from `next` stops early.
    fn fill_to(&mut self, n: usize, mut next: impl FnMut() -> Option<T>) {
        let n = n.min(self.cap);
        let base = self.ptr.as_ptr();
        let mut len = self.len;
        while len < n {
            let Some(v) = next() else {
                break;
            };
            // SAFETY: `len < n <= cap`: the slot is inside the buffer and uninitialised.
            unsafe { base.add(len).write(v) };
            len = len.wrapping_add(1);
        }
        self.len = len;
    }

    /// A copy in a new allocation.
    ///
    /// Errors: [`Error::NoMem`].
    ///
    /// Context: allocates with `ctx`.
    pub fn try_clone(&self, ctx: AllocCtx) -> Result<Self>
    where
        T: Clone,
    {
        let mut v = Self::with_capacity(self.len, ctx)?;
        v.extend_from_slice(self, ctx)?;
        Ok(v)
    }
}

impl<T, A: Allocator> Drop for Vec<T, A> {
    fn drop(&mut self) {
        // SAFETY: `[0, len)` is initialised and dropped once; the buffer was allocated with
        // `Layout::array::<T>(cap)` when `cap > 0` and the type is not zero-sized.
        unsafe {
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len));
            if !Self::ZST && self.cap > 0 {
                if let Ok(layout) = Layout::array::<T>(self.cap) {
                    A::deallocate(self.ptr.cast(), layout);
                }
            }
        }
    }
}

impl<T, A: Allocator> Default for Vec<T, A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, A: Allocator> Deref for Vec<T, A> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T, A: Allocator> DerefMut for Vec<T, A> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: fmt::Debug, A: Allocator> fmt::Debug for Vec<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: PartialEq, A: Allocator, B: Allocator> PartialEq<Vec<T, B>> for Vec<T, A> {
    fn eq(&self, other: &Vec<T, B>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq, A: Allocator> Eq for Vec<T, A> {}

impl<T: PartialEq, A: Allocator> PartialEq<[T]> for Vec<T, A> {
    fn eq(&self, other: &[T]) -> bool {
        self.as_slice() == other
    }
}

impl<'a, T, A: Allocator> IntoIterator for &'a Vec<T, A> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T, A: Allocator> IntoIterator for &'a mut Vec<T, A> {
    type Item = &'a mut T;
    type IntoIter = core::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T, A: Allocator> IntoIterator for Vec<T, A> {
    type Item = T;
    type IntoIter = IntoIter<T, A>;
    fn into_iter(self) -> IntoIter<T, A> {
        IntoIter {
            vec: ManuallyDrop::new(self),
            next: 0,
        }
    }
}

/// The owning iterator of a [`Vec`]: yields the elements in order; frees the buffer (and the
/// elements not yet yielded) when dropped.
pub struct IntoIter<T, A: Allocator> {
    vec: ManuallyDrop<Vec<T, A>>,
    /// Index of the next element to yield; `[next, len)` are still owned.
    next: usize,
}

impl<T, A: Allocator> Iterator for IntoIter<T, A> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.next >= self.vec.len {
            return None;
        }
        // SAFETY: `next < len`: the element is initialised and read exactly once.
        let v = unsafe { self.vec.ptr.as_ptr().add(self.next).read() };
        self.next = self.next.wrapping_add(1);
        Some(v)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.vec.len.wrapping_sub(self.next);
        (n, Some(n))
    }
}

impl<T, A: Allocator> Drop for IntoIter<T, A> {
    fn drop(&mut self) {
        // SAFETY: `[next, len)` are still initialised and owned here; they are dropped once,
        // then the vector is dropped with length 0, which frees only the buffer.
        unsafe {
            let rest = self.vec.len.wrapping_sub(self.next);
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(
                self.vec.ptr.as_ptr().add(self.next),
                rest,
            ));
            self.vec.len = 0;
            ManuallyDrop::drop(&mut self.vec);
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::super::Global;
    use super::*;
    use core::cell::Cell;

    type V<T> = Vec<T, Global>;
    const C: AllocCtx = AllocCtx::MaySleep;

    #[test]
    fn push_insert_remove_and_slices() {
        let mut v: V<u64> = V::new();
        assert_eq!(v.capacity(), 0);
        for i in 0..10 {
            v.push(i, C).unwrap();
        }
        assert!(v.capacity() >= 10);
        v.insert(0, 100, C).unwrap();
        v.insert(11, 200, C).unwrap();
        assert_eq!(v.insert(13, 1, C), Err(Error::Invalid));
        assert_eq!(v.remove(1), Some(0));
        assert_eq!(v.remove(99), None);
        assert_eq!(v.swap_remove(0), Some(100));
        assert_eq!(&v[..3], &[200, 1, 2]);
        v.retain(|x| x % 2 == 0);
        assert_eq!(&v[..], &[200, 2, 4, 6, 8]);
        v.remove_range(1, 3);
        assert_eq!(&v[..], &[200, 6, 8]);
        v.resize(5, 7, C).unwrap();
        assert_eq!(&v[..], &[200, 6, 8, 7, 7]);
        let w = v.try_clone(C).unwrap();
        assert_eq!(v, w);
        let all: std::vec::Vec<u64> = w.into_iter().collect();
        assert_eq!(all, [200, 6, 8, 7, 7]);
    }

    #[test]
    fn within_capacity_never_grows() {
        let mut v: V<u8> = V::with_capacity(2, C).unwrap();
        let cap = v.capacity();
        for i in 0..cap {
            v.push_within_capacity(i as u8).unwrap();
        }
        assert_eq!(v.push_within_capacity(9), Err(9));
        assert_eq!(v.insert_within_capacity(0, 9), Err(9));
        assert_eq!(v.capacity(), cap);
    }

    #[test]
    fn overflowing_reserve_is_nomem() {
        let mut v: V<u64> = V::new();
        v.push(1, C).unwrap();
        assert_eq!(v.reserve(usize::MAX, C), Err(Error::NoMem));
        assert_eq!(v.reserve(usize::MAX / 4, C), Err(Error::NoMem));
        assert_eq!(&v[..], &[1]);
    }

    #[test]
    fn drops_every_element_once() {
        struct D<'a>(&'a Cell<u32>);
        impl Drop for D<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let n = Cell::new(0);
        {
            let mut v: V<D<'_>> = V::new();
            for _ in 0..5 {
                v.push(D(&n), C).unwrap();
            }
            drop(v.remove(0));
            v.truncate(3);
            assert_eq!(n.get(), 2);
            let mut it = v.into_iter();
            drop(it.next());
            assert_eq!(n.get(), 3);
        }
        assert_eq!(n.get(), 5);
    }

    #[test]
    fn zero_sized_elements() {
        let mut v: V<()> = V::new();
        for _ in 0..1000 {
            v.push((), C).unwrap();
        }
        assert_eq!(v.len(), 1000);
        assert_eq!(v.pop(), Some(()));
    }
}
