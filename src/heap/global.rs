//! [`Global`]: the global allocator as an [`Allocator`] (feature `alloc`).

use super::{AllocCtx, Allocator};
use crate::{Error, Result};
use core::alloc::Layout;
use core::ptr::NonNull;

/// The program's global allocator (`#[global_allocator]`, or the system's under `std`),
/// reached through `alloc::alloc::{alloc, dealloc}`: a null return becomes
/// [`Error::NoMem`]; the global OOM handler (`handle_alloc_error`) is never called. The
/// context is ignored: a global allocator is assumed not to sleep in a way that matters to
/// the caller (true of user space; a kernel host supplies its own allocator instead).
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

// SAFETY: forwards to the global allocator, which upholds the same contract; null (failure)
// is turned into an error, never returned as a pointer.
unsafe impl Allocator for Global {
    fn allocate(layout: Layout, _ctx: AllocCtx) -> Result<NonNull<u8>> {
        if layout.size() == 0 {
            return Err(Error::Invalid);
        }
        // SAFETY: the layout is not zero-sized (checked above).
        let p = unsafe { alloc::alloc::alloc(layout) };
        NonNull::new(p).ok_or(Error::NoMem)
    }
    unsafe fn deallocate(ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from `allocate` with `layout`, which got it
        // from the global allocator with that layout.
        unsafe { alloc::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}
