//! A sort that cannot panic: heapsort, in place, `O(n log n)`, not stable.
//!
//! `core`'s `sort_unstable*` may panic when a comparison is not a total order (it checks,
//! since Rust 1.81); these never do: with an inconsistent comparison the order is unspecified,
//! nothing else goes wrong.

use core::cmp::Ordering;

/// Sort `v` by `cmp`, in place; never panics, never allocates.
///
/// Context: as `cmp`; never sleeps, never allocates, never panics.
pub fn sort_unstable_by<T>(v: &mut [T], mut cmp: impl FnMut(&T, &T) -> Ordering) {
    let n = v.len();
    // Build a max-heap, then move the maximum to the end repeatedly.
    let mut i = n / 2;
    while i > 0 {
        i = i.wrapping_sub(1);
        sift_down(v, i, n, &mut cmp);
    }
    let mut end = n;
    while end > 1 {
        end = end.wrapping_sub(1);
        swap(v, 0, end);
        sift_down(v, 0, end, &mut cmp);
    }
}

/// Sort `v` by the key `key`, in place; never panics, never allocates.
///
/// Context: as `key`; never sleeps, never allocates, never panics.
pub fn sort_unstable_by_key<T, K: Ord>(v: &mut [T], mut key: impl FnMut(&T) -> K) {
    sort_unstable_by(v, |a, b| key(a).cmp(&key(b)));
}

/// Sort `v` in ascending order, in place; never panics, never allocates.
///
/// Context: as `T::cmp`; never sleeps, never allocates, never panics.
pub fn sort_unstable<T: Ord>(v: &mut [T]) {
    sort_unstable_by(v, |a, b| a.cmp(b));
}

/// `v.swap(a, b)` behind a bounds check the optimiser sees, so no panic path remains.
fn swap<T>(v: &mut [T], a: usize, b: usize) {
    if a < v.len() && b < v.len() {
        v.swap(a, b);
    }
}

/// Restore the heap property below `root` in `v[..end]`.
fn sift_down<T>(
    v: &mut [T],
    mut root: usize,
    end: usize,
    cmp: &mut impl FnMut(&T, &T) -> Ordering,
) {
    loop {
        // `root < end <= len <= isize::MAX`, so `2 * root + 2` cannot overflow.
        let left = root.wrapping_mul(2).wrapping_add(1);
        if left >= end {
            return;
        }
        let right = left.wrapping_add(1);
        let mut child = left;
        if right < end {
            if let (Some(l), Some(r)) = (v.get(left), v.get(right)) {
                if cmp(l, r) == Ordering::Less {
                    child = right;
                }
            }
        }
        match (v.get(root), v.get(child)) {
            (Some(a), Some(b)) if cmp(a, b) == Ordering::Less => {}
            _ => return,
        }
        swap(v, root, child);
        root = child;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_core() {
        let mut seed = 0x1234_5678_u64;
        for n in 0..200 {
            let mut a: [u32; 200] = [0; 200];
            for x in a.iter_mut().take(n) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = (seed >> 40) as u32 % 50;
            }
            let mut b = a;
            sort_unstable(&mut a[..n]);
            b[..n].sort_unstable();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn inconsistent_comparison_does_not_panic() {
        let mut v = [5, 3, 9, 1, 7, 2, 8];
        let mut k = 0u32;
        sort_unstable_by(&mut v, |_, _| {
            k += 1;
            if k % 3 == 0 {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        });
        let mut s = v;
        s.sort_unstable();
        assert_eq!(s, [1, 2, 3, 5, 7, 8, 9]);
    }
}
