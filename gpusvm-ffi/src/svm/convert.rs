//! The C arguments turned into the crate's types (configuration, page-collection context,
//! access, window, event) and page entries handed to a C bind callback in batches.

use super::*;

pub(super) fn owner(has: bool, o: u32) -> Option<OwnerId> {
    has.then_some(OwnerId(o))
}

pub(super) fn config_from_c(c: &gpusvm_config) -> Result<SvmConfig> {
    let mut cfg = SvmConfig::new(c.mm_start, c.mm_range);
    if !c.chunk_sizes.is_null() || c.n_chunk_sizes != 0 {
        if c.chunk_sizes.is_null() || !c.chunk_sizes.is_aligned() {
            return Err(Error::Invalid);
        }
        if c.n_chunk_sizes > ::gpusvm::MAX_CHUNK_SIZES {
            return Err(Error::Invalid);
        }
        // SAFETY: non-null, aligned, at most MAX_CHUNK_SIZES entries readable by the caller's
        // contract.
        let sizes = unsafe { core::slice::from_raw_parts(c.chunk_sizes, c.n_chunk_sizes) };
        cfg = cfg.with_chunk_sizes(sizes)?;
    }
    if c.notifier_size != 0 {
        cfg.notifier_size = c.notifier_size;
    }
    if c.check_pages_threshold != 0 {
        cfg.check_pages_threshold = c.check_pages_threshold;
    }
    if c.retry_deadline_ns != 0 {
        cfg.retry.deadline_ns = c.retry_deadline_ns;
    }
    if c.retry_max_attempts != 0 {
        cfg.retry.max_attempts = c.retry_max_attempts;
    }
    if c.atomic_timeslice_ns != 0 {
        cfg.atomic_timeslice_ns = c.atomic_timeslice_ns;
    }
    cfg.prefer_devmem = c.prefer_devmem;
    cfg.source_peer_migrates = c.source_peer_migrates;
    cfg.can_migrate_same_pagemap = c.can_migrate_same_pagemap;
    cfg.owner = owner(c.has_owner, c.owner);
    cfg.validate()?;
    Ok(cfg)
}

pub(crate) fn pages_ctx(p: *const gpusvm_pages_ctx) -> Result<PagesCtx> {
    if p.is_null() {
        return Ok(PagesCtx::default());
    }
    if !p.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null and aligned; readable by the caller's contract (documented on every
    // function taking it).
    let c = unsafe { &*p };
    Ok(PagesCtx {
        read_only: c.read_only,
        devmem_only: c.devmem_only,
        allow_mixed: c.allow_mixed,
        owner: owner(c.has_owner, c.owner),
    })
}

pub(super) fn access(a: u32) -> Result<Access> {
    Ok(match a {
        GPUSVM_ACCESS_READ => Access::Read,
        GPUSVM_ACCESS_WRITE => Access::Write,
        GPUSVM_ACCESS_ATOMIC => Access::Atomic,
        _ => return Err(Error::Invalid),
    })
}

pub(super) fn window(start: u64, end: u64) -> Result<Window> {
    if start >= end {
        return Err(Error::Invalid);
    }
    Ok(Window { start, end })
}

pub(super) fn event(e: u32, has_owner: bool, o: u32) -> Result<Event> {
    Ok(match e {
        GPUSVM_EVENT_UNMAP => Event::Unmap,
        GPUSVM_EVENT_CLEAR => Event::Clear,
        GPUSVM_EVENT_PROTECTION => Event::Protection,
        GPUSVM_EVENT_MIGRATE => Event::Migrate {
            owner: owner(has_owner, o),
        },
        GPUSVM_EVENT_RELEASE => Event::Release,
        _ => return Err(Error::Invalid),
    })
}

pub(super) fn entry_to_c(va: u64, e: PageEntry) -> gpusvm_page_entry {
    gpusvm_page_entry {
        va,
        addr: e.addr(),
        size: e.size(),
        order: e.order(),
        dir: u8::try_from(dir_to_c(e.dir())).unwrap_or(u8::MAX),
        protocol: e.protocol().0,
        writable: e.writable(),
    }
}

/// Hand `entries` of `range` to the C callback in batches; the first non-zero return stops.
pub(super) fn walk_entries(
    f: BindFn,
    ctx: *mut c_void,
    range: &Range<FfiHost>,
    entries: &[PageEntry],
) -> c_int {
    walk_entries_at(
        f,
        ctx,
        core::ptr::from_ref(range).cast(),
        range.start(),
        entries,
    )
}

/// The function type behind [`gpusvm_bind_fn`].
pub(crate) type BindFn = unsafe extern "C" fn(
    *mut c_void,
    *const gpusvm_range,
    *const gpusvm_page_entry,
    usize,
    usize,
) -> c_int;

/// Hand `entries`, the first at virtual address `start`, to the C callback in batches, with
/// `handle` as its range argument; the first non-zero return stops.
pub(crate) fn walk_entries_at(
    f: BindFn,
    ctx: *mut c_void,
    handle: *const gpusvm_range,
    start: u64,
    entries: &[PageEntry],
) -> c_int {
    let mut buf = [gpusvm_page_entry::default(); BIND_BATCH];
    let mut va = start;
    let mut first = 0usize;
    for chunk in entries.chunks(BIND_BATCH) {
        let n = chunk.len();
        for (b, e) in buf.iter_mut().zip(chunk) {
            *b = entry_to_c(va, *e);
            va = va.wrapping_add(e.size());
        }
        // SAFETY: `buf` holds `n` initialised entries; the callback honours `gpusvm_bind_fn`.
        let rc = unsafe { f(ctx, handle, buf.as_ptr(), n, first) };
        if rc != 0 {
            return rc;
        }
        first = first.saturating_add(n);
    }
    0
}
