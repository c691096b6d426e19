//! Notifiers: fixed-size aligned intervals of the mirrored address space, each registered with
//! the platform and each holding the ranges that lie inside it.

use super::{RangeTree, SeqCounter};
use crate::Host;
use alloc::collections::BTreeMap;

/// One notifier `[start, end)`.
pub(crate) struct Notifier<H, L: Host> {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) seq: SeqCounter,
    pub(crate) ranges: RangeTree<L>,
    /// `None` while registration is in flight or after it was undone.
    pub(crate) handle: Option<H>,
}

impl<H, L: Host> Notifier<H, L> {
    pub(crate) fn new(start: u64, end: u64) -> Self {
        Notifier {
            start,
            end,
            seq: SeqCounter::new(),
            ranges: RangeTree::with_host(),
            handle: None,
        }
    }
}

/// The notifiers of one `Svm`, ordered by start address (they never overlap). Lookup by address
/// is O(log n). Kept under the notifier lock.
pub(crate) struct NotifierTree<H, L: Host> {
    map: BTreeMap<u64, Notifier<H, L>>,
}

impl<H, L: Host> Default for NotifierTree<H, L> {
    fn default() -> Self {
        NotifierTree {
            map: BTreeMap::new(),
        }
    }
}

impl<H, L: Host> NotifierTree<H, L> {
    /// The notifier containing `addr`.
    pub(crate) fn find(&self, addr: u64) -> Option<&Notifier<H, L>> {
        self.map
            .range(..=addr)
            .next_back()
            .map(|(_, n)| n)
            .filter(|n| addr < n.end)
    }

    /// The notifier containing `addr`, mutably.
    pub(crate) fn find_mut(&mut self, addr: u64) -> Option<&mut Notifier<H, L>> {
        self.map
            .range_mut(..=addr)
            .next_back()
            .map(|(_, n)| n)
            .filter(|n| addr < n.end)
    }

    /// The notifier that starts exactly at `start`.
    pub(crate) fn get(&self, start: u64) -> Option<&Notifier<H, L>> {
        self.map.get(&start)
    }

    pub(crate) fn insert(&mut self, n: Notifier<H, L>) {
        self.map.insert(n.start, n);
    }

    pub(crate) fn remove(&mut self, start: u64) -> Option<Notifier<H, L>> {
        self.map.remove(&start)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Notifier<H, L>> {
        self.map.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Take every notifier out.
    pub(crate) fn take_all(&mut self) -> BTreeMap<u64, Notifier<H, L>> {
        core::mem::take(&mut self.map)
    }
}
