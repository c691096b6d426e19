//! Attributes (madvise-like, per address interval) and prefetch.

use crate::ret;
use crate::svm::{gpusvm, put, svm_ref};
use ::gpusvm::platform::PagemapId;
use ::gpusvm::policy::{
    AtomicPolicy, AttrUpdate, MigrationPolicy, PreferredLoc, PrefetchLoc, RawAttr,
};
use ::gpusvm::{Error, Result};
use core::ffi::c_int;

/// `gpusvm_attr::kind`: preferred location; value 0 device default, 1 system memory, `2 + id`
/// the pagemap `id`.
pub const GPUSVM_ATTR_PREFERRED_LOC: u32 = 0;
/// `gpusvm_attr::kind`: migration policy; value 0 all pages, 1 system pages only.
pub const GPUSVM_ATTR_MIGRATION: u32 = 1;
/// `gpusvm_attr::kind`: atomic access; value 0 undefined, 1 device, 2 global, 3 CPU.
pub const GPUSVM_ATTR_ATOMIC: u32 = 2;

/// One attribute change (as an ioctl would carry it).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_attr {
    /// `GPUSVM_ATTR_*`.
    pub kind: u32,
    /// The new value (see the kind).
    pub value: u64,
    /// Must be zero.
    pub reserved: u64,
}

/// The attributes in force at one address, in the raw encoding of [`gpusvm_attr`] values.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_attrs {
    /// Preferred location (0 device default, 1 system, `2 + id` a pagemap).
    pub preferred_loc: u64,
    /// Migration policy (0 all pages, 1 system pages only).
    pub migration: u64,
    /// Atomic access (0 undefined, 1 device, 2 global, 3 CPU).
    pub atomic: u64,
}

/// `loc` of [`gpusvm_prefetch`]: system memory.
pub const GPUSVM_PREFETCH_SYSTEM: u32 = 0;
/// `loc`: the device's own memory.
pub const GPUSVM_PREFETCH_DEVICE: u32 = 1;
/// `loc`: the pagemap `pagemap` (of the device's owner).
pub const GPUSVM_PREFETCH_PAGEMAP: u32 = 2;

/// Set attributes of `[start, start + len)` from `n` raw changes (decoded all first, later
/// entries of the same kind win; one bad entry and nothing changes). Ranges straddling the
/// interval's edges are evicted and removed, inner ones lose their device mappings.
///
/// Returns 0; `-EINVAL` (bad handle, pointer, interval, entry or an empty change; unknown
/// pagemap), `-ENOLINK` (pagemap of another owner), `-ENODEV`, `-ENOMEM`; on error nothing
/// changes.
///
/// Context: may sleep; allocates the new attribute array with no lock held.
///
/// # Safety
/// `svm` NULL or live; `attrs` NULL or readable for `n` entries.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_set_attrs(
    svm: *mut gpusvm,
    start: u64,
    len: u64,
    attrs: *const gpusvm_attr,
    n: usize,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        if attrs.is_null() || !attrs.is_aligned() || n == 0 {
            return Err(Error::Invalid);
        }
        // SAFETY: non-null, aligned, `n` entries readable by the caller's contract.
        let raw = unsafe { core::slice::from_raw_parts(attrs, n) };
        // Decoded here, merged as `Svm::set_attrs_raw` merges (later entries win), without
        // an intermediate array.
        let mut u = AttrUpdate::default();
        for a in raw {
            let d = RawAttr {
                kind: a.kind,
                value: a.value,
                reserved: a.reserved,
            }
            .decode()?;
            u.preferred = d.preferred.or(u.preferred);
            u.migration = d.migration.or(u.migration);
            u.atomic = d.atomic.or(u.atomic);
        }
        s.svm.set_attrs(start, len, &u)
    })();
    ret(r)
}

/// The attributes in force at `addr`, in `*out`.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: takes the attribute lock shared; allocates nothing.
///
/// # Safety
/// `svm` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_attrs_at(
    svm: *mut gpusvm,
    addr: u64,
    out: *mut gpusvm_attrs,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        crate::svm::check_out(out)?;
        let a = s.svm.attrs_at(addr);
        let v = gpusvm_attrs {
            preferred_loc: match a.preferred {
                PreferredLoc::DeviceDefault => 0,
                PreferredLoc::System => 1,
                PreferredLoc::Pagemap(id) => u64::from(id.0).saturating_add(2),
            },
            migration: match a.migration {
                MigrationPolicy::AllPages => 0,
                MigrationPolicy::SystemPagesOnly => 1,
            },
            atomic: match a.atomic {
                AtomicPolicy::Undefined => 0,
                AtomicPolicy::Device => 1,
                AtomicPolicy::Global => 2,
                AtomicPolicy::Cpu => 3,
            },
        };
        // SAFETY: checked above.
        unsafe { put(out, v) }
    })();
    ret(r)
}

/// Move `[start, start + len)` to `loc` (`GPUSVM_PREFETCH_*`; `pagemap` for
/// `GPUSVM_PREFETCH_PAGEMAP`) without a fault: ranges are created, migrated (or evicted) and
/// collected as a fault would, so later device faults only bind.
///
/// Returns 0; `-EINVAL` (bad handle, interval, location or pagemap), `-ENOLINK`, `-EFAULT` (no
/// VMA), `-ENODEV`, migration and collection errors; ranges already processed stay moved.
///
/// Context: may sleep; as [`gpusvm_handle_fault`](crate::svm::gpusvm_handle_fault) per range.
///
/// # Safety
/// `svm` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_prefetch(
    svm: *mut gpusvm,
    start: u64,
    len: u64,
    loc: u32,
    pagemap: u32,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        let l = match loc {
            GPUSVM_PREFETCH_SYSTEM => PrefetchLoc::System,
            GPUSVM_PREFETCH_DEVICE => PrefetchLoc::Device,
            GPUSVM_PREFETCH_PAGEMAP => PrefetchLoc::Pagemap(PagemapId(pagemap)),
            _ => return Err(Error::Invalid),
        };
        s.svm.prefetch(start, len, l)
    })();
    ret(r)
}
