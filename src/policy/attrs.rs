//! The attribute store: policy attributes over address intervals, like `madvise`.
//!
//! Only intervals whose attributes differ from the defaults are stored, as non-overlapping
//! segments keyed by start; equal neighbours are merged, so the store stays as small as the
//! policy is varied. Lookup by address is O(log n); setting an interval is O(log n + k).

use super::{AtomicPolicy, Attrs, MigrationPolicy, PreferredLoc};
use crate::error::{Error, Result};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A change to some attributes (`None` fields stay as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttrUpdate {
    /// New preferred location.
    pub preferred: Option<PreferredLoc>,
    /// New migration policy.
    pub migration: Option<MigrationPolicy>,
    /// New atomic-access policy.
    pub atomic: Option<AtomicPolicy>,
}

impl AttrUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.preferred.is_none() && self.migration.is_none() && self.atomic.is_none()
    }

    /// `a` with the update applied.
    pub fn apply(&self, a: Attrs) -> Attrs {
        Attrs {
            preferred: self.preferred.unwrap_or(a.preferred),
            migration: self.migration.unwrap_or(a.migration),
            atomic: self.atomic.unwrap_or(a.atomic),
        }
    }
}

/// Attributes over address intervals (see the module docs).
///
/// ```
/// use gpusvm::policy::{AttrStore, AttrUpdate, Attrs, PreferredLoc};
/// let mut s = AttrStore::new();
/// let sys = AttrUpdate { preferred: Some(PreferredLoc::System), ..AttrUpdate::default() };
/// s.set(0x1000, 0x5000, &sys).unwrap();
/// s.set(0x5000, 0x9000, &sys).unwrap();           // merges with the first
/// assert_eq!(s.segments(), 1);
/// assert_eq!(s.get(0x8fff).preferred, PreferredLoc::System);
/// assert_eq!(s.get(0x9000), Attrs::default());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttrStore {
    /// start → (end, attributes), non-overlapping, never default, never equal-adjacent.
    map: BTreeMap<u64, (u64, Attrs)>,
}

impl AttrStore {
    /// An empty store (defaults everywhere).
    pub fn new() -> Self {
        AttrStore::default()
    }

    /// Number of stored segments.
    pub fn segments(&self) -> usize {
        self.map.len()
    }

    /// The segments `(start, end, attrs)` in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, Attrs)> + '_ {
        self.map.iter().map(|(s, (e, a))| (*s, *e, *a))
    }

    /// The attributes at `addr`.
    pub fn get(&self, addr: u64) -> Attrs {
        match self.map.range(..=addr).next_back() {
            Some((_, (end, a))) if addr < *end => *a,
            _ => Attrs::default(),
        }
    }

    /// The largest interval `[lo, hi)` around `addr` over which the attributes equal
    /// `get(addr)`: the stored segment containing `addr` (segments are maximal), or the gap of
    /// defaults between its neighbouring segments (`0` and `u64::MAX` at the ends). New SVM
    /// ranges are kept inside it.
    ///
    /// ```
    /// use gpusvm::policy::{AttrStore, AttrUpdate, PreferredLoc};
    /// let mut s = AttrStore::new();
    /// let sys = AttrUpdate { preferred: Some(PreferredLoc::System), ..AttrUpdate::default() };
    /// s.set(0x4000, 0x8000, &sys).unwrap();
    /// assert_eq!(s.extent(0x5000), (0x4000, 0x8000));
    /// assert_eq!(s.extent(0x1000), (0, 0x4000));
    /// assert_eq!(s.extent(0x8000), (0x8000, u64::MAX));
    /// ```
    pub fn extent(&self, addr: u64) -> (u64, u64) {
        let before = self.map.range(..=addr).next_back();
        if let Some((s, (e, _))) = before {
            if addr < *e {
                return (*s, *e);
            }
        }
        let lo = before.map(|(_, (e, _))| *e).unwrap_or(0);
        let hi = self
            .map
            .range(addr..)
            .next()
            .map(|(s, _)| *s)
            .unwrap_or(u64::MAX);
        (lo, hi)
    }

    /// Whether applying `u` to `[start, end)` would change any attribute there.
    pub fn would_change(&self, start: u64, end: u64, u: &AttrUpdate) -> bool {
        let mut at = start;
        for (s, e, a) in self.overlapping(start, end) {
            if at < s && u.apply(Attrs::default()) != Attrs::default() {
                return true;
            }
            if u.apply(a) != a {
                return true;
            }
            at = e;
        }
        at < end && u.apply(Attrs::default()) != Attrs::default()
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, Attrs)> + '_ {
        let first = self
            .map
            .range(..=start)
            .next_back()
            .filter(|(_, (e, _))| *e > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        self.map
            .range(first..end)
            .map(|(s, (e, a))| (*s, *e, *a))
            .filter(move |(_, e, _)| *e > start)
    }

    /// Split the segment containing `at` (if any) so that a boundary falls there.
    fn split_at(&mut self, at: u64) {
        let hit = self
            .map
            .range(..at)
            .next_back()
            .filter(|(_, (e, _))| *e > at)
            .map(|(s, (e, a))| (*s, *e, *a));
        if let Some((s, e, a)) = hit {
            self.map.insert(s, (at, a));
            self.map.insert(at, (e, a));
        }
    }

    /// Apply `u` to `[start, end)`: split at the edges, update, merge equal neighbours.
    ///
    /// Errors: [`Error::Invalid`] if `start >= end`; the store is then unchanged.
    pub fn set(&mut self, start: u64, end: u64, u: &AttrUpdate) -> Result<()> {
        if start >= end {
            return Err(Error::Invalid);
        }
        if u.is_empty() {
            return Ok(());
        }
        self.split_at(start);
        self.split_at(end);
        // The new pieces of [start, end): updated segments and updated gaps.
        let mut pieces: Vec<(u64, u64, Attrs)> = Vec::new();
        let mut at = start;
        let inside: Vec<(u64, u64, Attrs)> = self
            .map
            .range(start..end)
            .map(|(s, (e, a))| (*s, *e, *a))
            .collect();
        for (s, e, a) in inside {
            if at < s {
                pieces.push((at, s, u.apply(Attrs::default())));
            }
            pieces.push((s, e, u.apply(a)));
            self.map.remove(&s);
            at = e;
        }
        if at < end {
            pieces.push((at, end, u.apply(Attrs::default())));
        }
        for (s, e, a) in pieces {
            if a != Attrs::default() {
                self.map.insert(s, (e, a));
            }
        }
        self.merge_around(start, end);
        Ok(())
    }

    /// Merge equal adjacent segments touching `[start, end]`.
    fn merge_around(&mut self, start: u64, end: u64) {
        let from = self
            .map
            .range(..start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(start);
        let keys: Vec<u64> = self.map.range(from..=end).map(|(s, _)| *s).collect();
        let mut prev: Option<(u64, u64, Attrs)> = None;
        for k in keys {
            let Some(&(e, a)) = self.map.get(&k) else {
                continue;
            };
            match prev {
                Some((ps, pe, pa)) if pe == k && pa == a => {
                    self.map.remove(&k);
                    self.map.insert(ps, (e, a));
                    prev = Some((ps, e, a));
                }
                _ => prev = Some((k, e, a)),
            }
        }
    }

    /// Forget every attribute (back to defaults).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::platform::PagemapId;

    fn upd(p: PreferredLoc) -> AttrUpdate {
        AttrUpdate {
            preferred: Some(p),
            ..AttrUpdate::default()
        }
    }

    #[test]
    fn split_and_merge() {
        let mut s = AttrStore::new();
        s.set(0, 100, &upd(PreferredLoc::System)).unwrap();
        s.set(40, 60, &upd(PreferredLoc::Pagemap(PagemapId(1))))
            .unwrap();
        assert_eq!(s.segments(), 3);
        assert_eq!(s.get(39).preferred, PreferredLoc::System);
        assert_eq!(s.get(40).preferred, PreferredLoc::Pagemap(PagemapId(1)));
        assert_eq!(s.get(60).preferred, PreferredLoc::System);
        // Back to System in the middle: one segment again.
        s.set(40, 60, &upd(PreferredLoc::System)).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>().len(), 1);
        // Back to the default: the store empties.
        s.set(0, 100, &upd(PreferredLoc::DeviceDefault)).unwrap();
        assert_eq!(s.segments(), 0);
        assert!(s.set(5, 5, &upd(PreferredLoc::System)).is_err());
    }

    #[test]
    fn gaps_and_would_change() {
        let mut s = AttrStore::new();
        s.set(10, 20, &upd(PreferredLoc::System)).unwrap();
        s.set(30, 40, &upd(PreferredLoc::System)).unwrap();
        assert!(!s.would_change(10, 20, &upd(PreferredLoc::System)));
        assert!(
            s.would_change(10, 30, &upd(PreferredLoc::System)),
            "gap 20..30 changes"
        );
        assert!(!s.would_change(20, 30, &upd(PreferredLoc::DeviceDefault)));
        s.set(0, 50, &upd(PreferredLoc::System)).unwrap();
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [(
                0,
                50,
                Attrs {
                    preferred: PreferredLoc::System,
                    ..Attrs::default()
                }
            )]
        );
    }
}
