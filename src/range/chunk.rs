//! Chunk-size selection for a new range (SPEC §2), as a pure function.

use crate::error::{Error, Result};
use crate::platform::PAGE_SIZE;

/// Everything [`select_chunk`] needs to know about the fault, as half-open intervals.
#[derive(Debug, Clone, Copy)]
pub struct ChunkQuery<'a> {
    /// The faulting address.
    pub addr: u64,
    /// The VMA containing `addr`.
    pub vma: (u64, u64),
    /// The notifier interval containing `addr`.
    pub notifier: (u64, u64),
    /// The device-VA window the driver allows for this fault.
    pub window: (u64, u64),
    /// Candidate chunk sizes, largest first, each a power of two, the last one `PAGE_SIZE`.
    pub chunk_sizes: &'a [u64],
    /// Candidates larger than one page and at most this size must have all their CPU pages
    /// present.
    pub check_pages_threshold: u64,
}

fn contains(outer: (u64, u64), s: u64, e: u64) -> bool {
    outer.0 <= s && e <= outer.1
}

/// Check a chunk-size list: non-empty, strictly descending, every size a power of two of at
/// least `PAGE_SIZE`, the last one exactly `PAGE_SIZE` (SPEC §1).
///
/// Errors: [`Error::Invalid`] otherwise.
pub(crate) fn check_chunk_sizes(sizes: &[u64]) -> Result<()> {
    if sizes.last() != Some(&PAGE_SIZE) {
        return Err(Error::Invalid);
    }
    let mut prev: Option<u64> = None;
    for &s in sizes {
        if !s.is_power_of_two() || s < PAGE_SIZE || prev.is_some_and(|p| s >= p) {
            return Err(Error::Invalid);
        }
        prev = Some(s);
    }
    Ok(())
}

/// Choose the interval `[start, end)` of the range to create for a fault.
///
/// Tries each chunk size from largest to smallest; the candidate is the chunk-aligned block
/// containing `q.addr`; the first candidate that lies inside the VMA, the notifier and the window,
/// for which `overlaps(start, end)` is false, and — if it is larger than a page and not larger
/// than `check_pages_threshold` — for which `all_present(start, end)` is true, is chosen.
///
/// Errors, in this order of precedence: [`Error::Invalid`] if the chunk list is malformed (empty,
/// not strictly descending, a size that is not a power of two or is below `PAGE_SIZE`, or a last
/// size other than `PAGE_SIZE`) — the whole list is checked before any candidate is tried;
/// [`Error::Fault`] if `addr` is outside the VMA; [`Error::Invalid`] if `addr` is outside the
/// notifier or the window, or if no candidate fits. Candidates whose end would overflow `u64`
/// never fit. The callbacks are only consulted for candidates inside the VMA, the notifier and
/// the window (`all_present` only for ones that `overlaps` accepted).
///
/// Context: takes no lock and allocates nothing itself; sleeps, locks and allocates only as
/// the callbacks do (in [`Svm::find_or_insert`](crate::Svm::find_or_insert): the notifier lock
/// shared, and a page snapshot allocated with
/// [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) with no lock held).
///
/// ```
/// use gpusvm::range::{select_chunk, ChunkQuery};
/// const M: u64 = 1 << 20;
/// let q = ChunkQuery {
///     addr: 5 * M + 4096,
///     vma: (4 * M, 7 * M),          // 3 MiB VMA
///     notifier: (0, 512 * M),
///     window: (0, u64::MAX),
///     chunk_sizes: &[2 * M, 64 * 1024, 4096],
///     check_pages_threshold: 64 * 1024,
/// };
/// // The 2 MiB block [4 MiB, 6 MiB) fits in the VMA.
/// assert_eq!(select_chunk(&q, |_, _| false, |_, _| true), Ok((4 * M, 6 * M)));
/// ```
pub fn select_chunk(
    q: &ChunkQuery<'_>,
    mut overlaps: impl FnMut(u64, u64) -> bool,
    mut all_present: impl FnMut(u64, u64) -> bool,
) -> Result<(u64, u64)> {
    check_chunk_sizes(q.chunk_sizes)?;
    if !(q.vma.0 <= q.addr && q.addr < q.vma.1) {
        return Err(Error::Fault);
    }
    if !(q.notifier.0 <= q.addr && q.addr < q.notifier.1) {
        return Err(Error::Invalid);
    }
    if !(q.window.0 <= q.addr && q.addr < q.window.1) {
        return Err(Error::Invalid);
    }
    for &size in q.chunk_sizes {
        let start = q.addr & !(size.wrapping_sub(1));
        let Some(end) = start.checked_add(size) else {
            continue;
        };
        if !contains(q.vma, start, end)
            || !contains(q.notifier, start, end)
            || !contains(q.window, start, end)
        {
            continue;
        }
        if overlaps(start, end) {
            continue;
        }
        if size > PAGE_SIZE && size <= q.check_pages_threshold && !all_present(start, end) {
            continue;
        }
        return Ok((start, end));
    }
    Err(Error::Invalid)
}

#[cfg(all(test, not(loom)))]
mod tests;
