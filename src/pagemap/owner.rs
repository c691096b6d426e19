//! The owner registry (SPEC §6 "Owners / interconnect"): peers — pagemaps and `Svm` instances —
//! join a list with a symmetric `has_interconnect` predicate and are grouped under owners.
//! Device-private pages are directly usable (no migration) by every peer of the same owner.
//!
//! Join rule: a joining peer adopts the owner of the first group (oldest first) all of whose
//! members have a fast interconnect with it; otherwise it starts a new owner. Leaving drops the
//! peer's reference; an owner dies with its last peer (its id is never reused).
//!
//! Locking: one lock ([`OWNER_REGISTRY`](crate::sync::class::OWNER_REGISTRY), a class that may
//! sleep and that the invalidation path never takes) around the group list; the predicate is
//! called with it held, so it must not call back into the registry. The groups and their member
//! lists are arrays on the host's allocator, grown under that lock with
//! [`AllocCtx::MaySleep`] before anything changes.

use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::platform::OwnerId;
use crate::sync::{class, Mutex};
use crate::{DefaultHost, Host, HostVec};

/// Identifies a peer in an [`OwnerRegistry`] (chosen by the driver, unique per registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// The symmetric "fast interconnect" predicate of an [`OwnerRegistry`]. Implemented by every
/// `Fn(PeerId, PeerId) -> bool`.
pub trait Interconnect {
    /// Whether `a` and `b` share a fast interconnect.
    fn has_interconnect(&self, a: PeerId, b: PeerId) -> bool;
}

impl<F: Fn(PeerId, PeerId) -> bool> Interconnect for F {
    fn has_interconnect(&self, a: PeerId, b: PeerId) -> bool {
        self(a, b)
    }
}

struct Group<L: Host> {
    owner: OwnerId,
    members: HostVec<L, PeerId>,
}

impl<L: Host> core::fmt::Debug for Group<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Group")
            .field("owner", &self.owner)
            .field("members", &self.members)
            .finish()
    }
}

struct Inner<L: Host> {
    /// Oldest first.
    groups: HostVec<L, Group<L>>,
    next: u32,
}

impl<L: Host> core::fmt::Debug for Inner<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inner")
            .field("groups", &self.groups)
            .field("next", &self.next)
            .finish()
    }
}

/// The owner registry (see the module docs).
///
/// ```
/// use gpusvm::pagemap::{OwnerRegistry, PeerId};
/// // Peers 0 and 1 share a link; 2 has none.
/// let reg = OwnerRegistry::new(|a: PeerId, b: PeerId| a.0 < 2 && b.0 < 2 || a == b).unwrap();
/// let o0 = reg.join(PeerId(0)).unwrap();
/// let o1 = reg.join(PeerId(1)).unwrap();
/// let o2 = reg.join(PeerId(2)).unwrap();
/// assert_eq!(o0, o1);
/// assert_ne!(o0, o2);
/// reg.leave(PeerId(2)).unwrap();
/// assert_eq!(reg.owner_of(PeerId(2)), None);
/// assert_eq!(&reg.members(o0).unwrap()[..], &[PeerId(0), PeerId(1)]);
/// ```
pub struct OwnerRegistry<F, L: Host = DefaultHost> {
    inner: Mutex<L, Inner<L>>,
    has_interconnect: F,
}

impl<F, L: Host> core::fmt::Debug for OwnerRegistry<F, L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OwnerRegistry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F: Interconnect> OwnerRegistry<F> {
    /// An empty registry with the symmetric predicate `has_interconnect`, on the default lock
    /// facet ([`with_host`](Self::with_host) chooses another).
    ///
    /// Errors: [`Error::NoMem`] if the host cannot create the registry's lock (never with the
    /// default facet's spinning locks).
    ///
    /// Context: does not sleep or allocate with the default facet; takes no lock.
    pub fn new(has_interconnect: F) -> Result<Self> {
        Self::with_host(has_interconnect)
    }
}

impl<F: Interconnect, L: Host> OwnerRegistry<F, L> {
    /// An empty registry with the symmetric predicate `has_interconnect`, whose lock comes
    /// from the facet `L`.
    ///
    /// Errors: [`Error::NoMem`] if the host cannot create the registry's lock.
    ///
    /// Context: may sleep if the host allocates its lock objects (see
    /// [`RawMutex::new`](crate::sync::RawMutex::new)); allocates nothing else; takes no lock.
    pub fn with_host(has_interconnect: F) -> Result<Self> {
        Ok(OwnerRegistry {
            inner: Mutex::new(
                &class::OWNER_REGISTRY,
                Inner {
                    groups: HostVec::<L, Group<L>>::new(),
                    next: 0,
                },
            )?,
            has_interconnect,
        })
    }

    /// Join: returns the owner the peer now belongs to.
    ///
    /// Errors: [`Error::Invalid`] if the peer already joined; [`Error::NoMem`]; on error
    /// nothing changes.
    ///
    /// Context: as [`join_all`](Self::join_all).
    pub fn join(&self, peer: PeerId) -> Result<OwnerId> {
        self.join_all(core::slice::from_ref(&peer))
    }

    fn linked(&self, a: PeerId, b: PeerId) -> bool {
        self.has_interconnect.has_interconnect(a, b) && self.has_interconnect.has_interconnect(b, a)
    }

    /// Join several peers as one unit (for example a device's `Svm` and its pagemap), so
    /// that they always get the same owner even while other peers join and leave: the group
    /// adopted is the first all of whose members have a fast interconnect with every one of
    /// `peers`; otherwise they start a new owner together.
    ///
    /// Errors: [`Error::Invalid`] if `peers` is empty, holds duplicates or a peer that already
    /// joined, or if two of them lack an interconnect with each other; [`Error::NoMem`] (the
    /// member list or the group list cannot grow, or the owner ids ran out). On error nothing
    /// changes.
    ///
    /// Context: may sleep; takes the registry lock and calls the predicate under it; allocates
    /// under it with [`AllocCtx::MaySleep`] (the lock's class may sleep and is not taken by
    /// the invalidation path), before anything changes.
    pub fn join_all(&self, peers: &[PeerId]) -> Result<OwnerId> {
        if peers.is_empty() {
            return Err(Error::Invalid);
        }
        for (i, &p) in peers.iter().enumerate() {
            for &q in peers.iter().skip(i.saturating_add(1)) {
                if p == q || !self.linked(p, q) {
                    return Err(Error::Invalid);
                }
            }
        }
        let mut g = self.inner.lock();
        if g.groups
            .iter()
            .any(|gr| peers.iter().any(|p| gr.members.contains(p)))
        {
            return Err(Error::Invalid);
        }
        let pick = g.groups.iter().position(|gr| {
            gr.members
                .iter()
                .all(|&m| peers.iter().all(|&p| self.linked(m, p)))
        });
        match pick.and_then(|i| g.groups.get_mut(i)) {
            Some(gr) => {
                // All or nothing: the room is reserved first.
                gr.members.extend_from_slice(peers, AllocCtx::MaySleep)?;
                Ok(gr.owner)
            }
            None => {
                let owner = OwnerId(g.next);
                let next = g.next.checked_add(1).ok_or(Error::NoMem)?;
                let mut members = HostVec::<L, PeerId>::new();
                members.extend_from_slice(peers, AllocCtx::MaySleep)?;
                g.groups
                    .push(Group { owner, members }, AllocCtx::MaySleep)?;
                g.next = next;
                Ok(owner)
            }
        }
    }

    /// Leave: the peer drops its reference to its owner; the owner dies with its last peer.
    /// Returns the owner it left.
    ///
    /// Errors: [`Error::Invalid`] if the peer is not a member.
    ///
    /// Context: may sleep (the registry lock); never allocates (frees a dead owner's member
    /// list under the lock).
    pub fn leave(&self, peer: PeerId) -> Result<OwnerId> {
        let mut g = self.inner.lock();
        let i = g
            .groups
            .iter()
            .position(|gr| gr.members.contains(&peer))
            .ok_or(Error::Invalid)?;
        let gr = g.groups.get_mut(i).ok_or(Error::Invalid)?;
        gr.members.retain(|&m| m != peer);
        let owner = gr.owner;
        if gr.members.is_empty() {
            drop(g.groups.remove(i));
        }
        Ok(owner)
    }

    /// The owner of `peer`, if it is a member.
    ///
    /// Context: may sleep (the registry lock); never allocates.
    pub fn owner_of(&self, peer: PeerId) -> Option<OwnerId> {
        let g = self.inner.lock();
        g.groups
            .iter()
            .find(|gr| gr.members.contains(&peer))
            .map(|gr| gr.owner)
    }

    /// The members of `owner`, in joining order (empty if it is dead).
    ///
    /// Errors: [`Error::NoMem`] when the copy cannot be allocated.
    ///
    /// Context: may sleep; takes the registry lock and allocates the copy under it with
    /// [`AllocCtx::MaySleep`].
    pub fn members(&self, owner: OwnerId) -> Result<HostVec<L, PeerId>> {
        let g = self.inner.lock();
        match g.groups.iter().find(|gr| gr.owner == owner) {
            Some(gr) => gr.members.try_clone(AllocCtx::MaySleep),
            None => Ok(HostVec::<L, PeerId>::new()),
        }
    }

    /// Number of live owners.
    ///
    /// Context: may sleep (the registry lock); never allocates.
    pub fn owners(&self) -> usize {
        self.inner.lock().groups.len()
    }
}

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn join_rule_requires_a_link_to_every_member() {
        // 0-1, 1-2 linked; 0-2 not.
        let link = |a: PeerId, b: PeerId| {
            let (x, y) = (a.0.min(b.0), a.0.max(b.0));
            x == y || (x, y) == (0, 1) || (x, y) == (1, 2)
        };
        let r = OwnerRegistry::new(link).unwrap();
        let o0 = r.join(PeerId(0)).unwrap();
        let o1 = r.join(PeerId(1)).unwrap();
        assert_eq!(o0, o1);
        let o2 = r.join(PeerId(2)).unwrap();
        assert_ne!(o2, o0, "2 lacks a link to 0, a member of the first group");
        assert_eq!(r.owners(), 2);
        assert_eq!(r.join(PeerId(1)), Err(Error::Invalid));
        assert_eq!(r.leave(PeerId(0)), Ok(o0));
        assert_eq!(&r.members(o0).unwrap()[..], &[PeerId(1)]);
        assert_eq!(r.leave(PeerId(1)), Ok(o0));
        assert_eq!(r.owners(), 1, "owner dies with its last peer");
        assert_eq!(r.leave(PeerId(1)), Err(Error::Invalid));
        // A new peer never gets a dead owner's id.
        let o3 = r.join(PeerId(3)).unwrap();
        assert!(o3 != o0 && o3 != o2);
    }
}

/// A failed allocation leaves the registry as it was (the simulator's allocator fails on
/// request).
#[cfg(all(test, feature = "sim", not(loom)))]
mod nomem_tests {
    use super::*;
    use crate::sim::{SimAlloc, SimHost};

    #[test]
    fn join_without_memory_changes_nothing() {
        let r = OwnerRegistry::<_, SimHost>::with_host(|_: PeerId, _: PeerId| true).unwrap();
        SimAlloc::fail_next(1);
        assert_eq!(r.join(PeerId(0)), Err(Error::NoMem));
        SimAlloc::stop_failing();
        assert_eq!(r.owners(), 0);
        assert_eq!(r.owner_of(PeerId(0)), None);
        let o = r.join(PeerId(0)).unwrap();
        assert_eq!(o, OwnerId(0), "the failed join consumed no owner id");
        // Fill the group's member array, then fail its growth.
        let mut p = 1;
        while r.members(o).unwrap().len() < 4 {
            r.join(PeerId(p)).unwrap();
            p += 1;
        }
        let before = r.members(o).unwrap();
        SimAlloc::fail_next(1);
        assert_eq!(r.join(PeerId(p)), Err(Error::NoMem));
        SimAlloc::stop_failing();
        assert_eq!(r.members(o).unwrap(), before);
        assert_eq!(r.owner_of(PeerId(p)), None);
        SimAlloc::fail_next(1);
        assert_eq!(r.members(o).err(), Some(Error::NoMem));
        SimAlloc::stop_failing();
        assert_eq!(r.join(PeerId(p)), Ok(o));
    }
}
