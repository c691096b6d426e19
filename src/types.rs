//! The vocabulary every layer speaks: addresses and page sizes, the identifiers of pagemaps,
//! owners and notifiers, the kind of a device access, the window a fault may create a range
//! in, the events that change the CPU page tables, DMA directions, and the packed page entry a
//! driver writes into its page tables.
//!
//! This is the bottom layer (with [`error`](crate::error) and [`atomic`](crate::atomic)): it
//! depends on nothing else in the crate, and every other layer may use it. The types are
//! re-exported where a reader of an upper layer looks for them ([`platform`](crate::platform)
//! re-exports the identifiers and page sizes, [`pages`](crate::pages) the page entry, the crate
//! root [`Access`], [`Window`], [`Event`] and [`PageEntry`]).

use crate::error::{Error, Result};

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Page order of a 2 MiB huge page.
pub const HUGE_ORDER: u8 = 9;
/// The largest page order the crate accepts from a platform (1 GiB).
pub const MAX_ORDER: u8 = 18;

/// Identifies a pagemap: the device memory of one device or tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PagemapId(pub u32);

/// Identifies an owner: a group of devices that share device-private pages over a fast
/// interconnect (Linux: the `dev_private_owner` pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u32);

/// Identifies one notifier of one [`Svm`](crate::Svm): the platform passes it back to
/// `invalidate_begin`/`invalidate_end`. It is the notifier's start address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotifierId(pub u64);

/// Direction of a DMA mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// The device only reads.
    ToDevice,
    /// The device only writes.
    FromDevice,
    /// The device reads and writes.
    Bidirectional,
}

/// The kind of device access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An atomic read-modify-write.
    Atomic,
}

impl Access {
    /// Whether the access writes.
    ///
    /// Context: any.
    pub fn writes(self) -> bool {
        !matches!(self, Access::Read)
    }
}

/// A window of device virtual addresses a fault may create a range in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Window {
    /// No restriction.
    pub const ALL: Window = Window {
        start: 0,
        end: u64::MAX,
    };
    /// Whether `addr` lies in the window.
    ///
    /// Context: any; allocates nothing.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Why the CPU page tables of an interval are changing (Linux `mmu_notifier_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The interval is unmapped (munmap): ranges are marked unmapped and garbage-collected.
    Unmap,
    /// Pages are being cleared (MADV_DONTNEED, reclaim, copy-on-write break).
    Clear,
    /// Protection is changing (mprotect, write-protection for fork).
    Protection,
    /// Pages are being migrated by the owner given (this crate, or another driver).
    Migrate {
        /// The owner performing the migration, if a device owner.
        owner: Option<OwnerId>,
    },
    /// The address space is being torn down: like `Unmap`.
    Release,
}

/// How the device reaches the memory behind a [`PageEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    /// A system page reached through a DMA (IOMMU) mapping; the address is a bus address.
    pub const SYSTEM: Protocol = Protocol(0);
    /// A page of the device's own memory; the address is a device physical address.
    pub const DEVICE_LOCAL: Protocol = Protocol(1);
    /// Largest protocol value that fits an entry (values above `DEVICE_LOCAL` are peer-to-peer
    /// protocols chosen by the owning pagemap).
    pub const MAX: u8 = 7;
}

/// One packed page-state entry: a page-aligned address plus order, direction and protocol in
/// the low bits (8 bytes).
///
/// ```
/// use gpusvm::pages::{PageEntry, Protocol};
/// use gpusvm::platform::DmaDirection;
/// let e = PageEntry::new(0x20_0000, 9, DmaDirection::Bidirectional, Protocol::SYSTEM).unwrap();
/// assert_eq!((e.addr(), e.order(), e.size()), (0x20_0000, 9, 2 << 20));
/// assert_eq!(e.dir(), DmaDirection::Bidirectional);
/// assert!(PageEntry::new(0x20_0001, 0, DmaDirection::ToDevice, Protocol::SYSTEM).is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageEntry(u64);

static_assertions::assert_eq_size!(PageEntry, u64);

const ORDER_BITS: u64 = 0x1f;
const DIR_SHIFT: u32 = 5;
const PROTO_SHIFT: u32 = 7;
const ADDR_MASK: u64 = !(PAGE_SIZE - 1);

impl PageEntry {
    /// An entry from its raw bits (the crate's collection words reuse the entry array before
    /// the mapping pass turns them into entries).
    #[inline]
    pub(crate) const fn from_raw(raw: u64) -> PageEntry {
        PageEntry(raw)
    }
    /// The raw bits.
    #[inline]
    pub(crate) const fn raw(self) -> u64 {
        self.0
    }
    /// A system-memory entry at bus address `addr` (the fault path's fast form of
    /// [`new`](Self::new)); `None` if `addr` is not page aligned or `order` too large.
    #[inline]
    pub(crate) fn system(addr: u64, order: u8, dir: DmaDirection) -> Option<PageEntry> {
        if addr & !ADDR_MASK != 0 || order > MAX_ORDER {
            return None;
        }
        let d: u64 = match dir {
            DmaDirection::ToDevice => 0,
            DmaDirection::FromDevice => 1,
            DmaDirection::Bidirectional => 2,
        };
        Some(PageEntry(
            addr | u64::from(order)
                | (d << DIR_SHIFT)
                | (u64::from(Protocol::SYSTEM.0) << PROTO_SHIFT),
        ))
    }
    /// Pack an entry. Errors: [`Error::Invalid`] if `addr` is not page aligned, `order` exceeds
    /// [`MAX_ORDER`], or the protocol does not fit.
    ///
    /// Context: any; allocates nothing.
    pub fn new(addr: u64, order: u8, dir: DmaDirection, proto: Protocol) -> Result<PageEntry> {
        if addr & !ADDR_MASK != 0 || order > MAX_ORDER || proto.0 > Protocol::MAX {
            return Err(Error::Invalid);
        }
        let d: u64 = match dir {
            DmaDirection::ToDevice => 0,
            DmaDirection::FromDevice => 1,
            DmaDirection::Bidirectional => 2,
        };
        Ok(PageEntry(
            addr | u64::from(order) | (d << DIR_SHIFT) | (u64::from(proto.0) << PROTO_SHIFT),
        ))
    }
    /// The page-aligned address (bus address, device address, or peer address).
    ///
    /// Context: any.
    pub fn addr(self) -> u64 {
        self.0 & ADDR_MASK
    }
    /// The page order of the entry.
    ///
    /// Context: any.
    pub fn order(self) -> u8 {
        // Masked to 5 bits: the cast cannot truncate.
        (self.0 & ORDER_BITS) as u8
    }
    /// Number of base pages the entry covers.
    ///
    /// Context: any.
    pub fn npages(self) -> u64 {
        1u64 << self.order()
    }
    /// Size in bytes.
    ///
    /// Context: any.
    pub fn size(self) -> u64 {
        PAGE_SIZE << self.order()
    }
    /// The DMA direction.
    ///
    /// Context: any.
    pub fn dir(self) -> DmaDirection {
        match (self.0 >> DIR_SHIFT) & 3 {
            0 => DmaDirection::ToDevice,
            1 => DmaDirection::FromDevice,
            _ => DmaDirection::Bidirectional,
        }
    }
    /// Whether the device may write through this entry.
    ///
    /// Context: any.
    pub fn writable(self) -> bool {
        self.dir() != DmaDirection::ToDevice
    }
    /// The protocol.
    ///
    /// Context: any.
    pub fn protocol(self) -> Protocol {
        // Masked to 3 bits.
        Protocol(((self.0 >> PROTO_SHIFT) & 7) as u8)
    }
}

impl core::fmt::Debug for PageEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PageEntry({:#x}, order {}, {:?}, proto {})",
            self.addr(),
            self.order(),
            self.dir(),
            self.protocol().0
        )
    }
}
