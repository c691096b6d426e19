//! Physical memory of the firmware host: a pool of system frames and a small device memory
//! (VRAM), both static arrays, plus the counters every facet shares (live DMA mappings, the
//! tick clock).
//!
//! | memory | frames | frame numbers | bus / device address |
//! | --- | --- | --- | --- |
//! | system RAM pool | [`SYS_FRAMES`] × 4 KiB | [`SYS_PFN_BASE`] + index | `pfn << 12` (identity IOMMU) |
//! | device memory | [`VRAM_PAGES`] × 4 KiB | [`VRAM_DPFN_BASE`] + index | `dpfn << 12` |
//!
//! Frame numbers are fixed constants, not derived from the arrays' addresses, so every target
//! (32- or 64-bit) sees the same numbers and the scenario stays deterministic.
//!
//! Single-threaded by construction: the shared state lives in `Cell`/`RefCell` (so [`Phys`] is
//! not `Sync`), every borrow is local to one method and fallible (`try_borrow_mut`), and no
//! method calls out while it holds a borrow.

use core::cell::{Cell, RefCell, UnsafeCell};
use core::sync::atomic::{AtomicBool, Ordering};
use gpusvm::platform::PAGE_SIZE;

/// Bytes in a page.
pub const PAGE: usize = PAGE_SIZE as usize;
/// One 4 KiB frame.
pub type Frame = [u8; PAGE];

/// Number of system frames in the pool.
pub const SYS_FRAMES: usize = 64;
/// Number of device-memory pages.
pub const VRAM_PAGES: usize = 32;
/// Frame number of the first system frame.
pub const SYS_PFN_BASE: u64 = 0x1_0000;
/// Device frame number of the first device page (32-page aligned, so that naturally aligned
/// runs of device frames exist).
pub const VRAM_DPFN_BASE: u64 = 0x8_0000;

// The allocation bitmap of a pool is sized for the larger of the two.
const _: () = assert!(VRAM_PAGES <= SYS_FRAMES);

/// A static array of pages that can be handed out once, as `&'static mut`.
pub struct PageRegion<const N: usize> {
    taken: AtomicBool,
    pages: UnsafeCell<[Frame; N]>,
}

// SAFETY: the only access to `pages` is through `take`, which hands out the unique `&mut` at
// most once (guarded by the atomic swap of `taken`); after that the region itself never touches
// the array again, so sharing `&PageRegion` between threads cannot create aliasing access.
unsafe impl<const N: usize> Sync for PageRegion<N> {}

impl<const N: usize> PageRegion<N> {
    /// A zeroed region (lands in `.bss`).
    pub const fn new() -> Self {
        PageRegion {
            taken: AtomicBool::new(false),
            pages: UnsafeCell::new([[0; PAGE]; N]),
        }
    }

    /// The pages, the first time; `None` afterwards.
    // A `&mut` from `&self` is what this type is for: `taken` makes it unique.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut [Frame]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: `taken` was false and is now true, so this is the only call that gets here
        // for this region: no other reference to the array exists or will ever be created.
        // The region is `'static`, so the borrow may be too.
        let pages: &'static mut [Frame; N] = unsafe { &mut *self.pages.get() };
        Some(pages)
    }
}

impl<const N: usize> Default for PageRegion<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The system frame pool.
static SYS_REGION: PageRegion<SYS_FRAMES> = PageRegion::new();
/// The device memory.
static VRAM_REGION: PageRegion<VRAM_PAGES> = PageRegion::new();

/// One memory (system pool or VRAM): its pages and which are allocated.
struct Pool {
    pages: &'static mut [Frame],
    used: [bool; SYS_FRAMES],
    base: u64,
}

impl Pool {
    fn new(pages: &'static mut [Frame], base: u64) -> Self {
        Pool {
            pages,
            used: [false; SYS_FRAMES],
            base,
        }
    }

    /// Index of frame `pfn`, if it is one of this pool's.
    fn index(&self, pfn: u64) -> Option<usize> {
        let i = usize::try_from(pfn.checked_sub(self.base)?).ok()?;
        (i < self.pages.len()).then_some(i)
    }

    fn frame(&mut self, pfn: u64) -> Option<&mut Frame> {
        let i = self.index(pfn)?;
        self.pages.get_mut(i)
    }

    fn is_used(&self, i: usize) -> bool {
        self.used.get(i).copied().unwrap_or(true)
    }

    fn set_used(&mut self, i: usize, v: bool) -> bool {
        match self.used.get_mut(i) {
            Some(u) => {
                let was = *u;
                *u = v;
                was
            }
            None => v,
        }
    }

    fn free_count(&self) -> usize {
        (0..self.pages.len()).filter(|&i| !self.is_used(i)).count()
    }

    fn pfn(&self, i: usize) -> u64 {
        self.base.wrapping_add(i as u64)
    }
}

/// Errors of the physical-memory helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhysError {
    /// A frame number outside the pool.
    BadFrame,
    /// No free frame.
    Full,
    /// A re-entrant borrow (a bug of the host: a method called out while borrowing).
    Busy,
    /// A byte offset or length past the page.
    Bounds,
}

/// The shared physical state of the firmware host.
pub struct Phys {
    sys: RefCell<Pool>,
    vram: RefCell<Pool>,
    /// Live DMA mappings (map calls not yet unmapped).
    pub dma_live: Cell<u64>,
    /// DMA mappings made so far.
    pub dma_total: Cell<u64>,
    /// Unmaps of addresses that are not system frames (a bug).
    pub dma_bad_unmaps: Cell<u64>,
    /// Device-memory allocations made and released so far.
    pub vram_allocs: Cell<u64>,
    /// Device-memory allocations released so far.
    pub vram_releases: Cell<u64>,
    /// Release calls naming a frame that was not allocated (a bug).
    pub vram_bad_releases: Cell<u64>,
    /// The clock, in nanoseconds.
    clock: Cell<u64>,
}

impl Phys {
    /// The physical memory, built over the static regions. `None` if they were taken already
    /// (the scenario runs once per boot).
    pub fn take() -> Option<Phys> {
        let sys = SYS_REGION.take()?;
        let vram = VRAM_REGION.take()?;
        Some(Phys {
            sys: RefCell::new(Pool::new(sys, SYS_PFN_BASE)),
            vram: RefCell::new(Pool::new(vram, VRAM_DPFN_BASE)),
            dma_live: Cell::new(0),
            dma_total: Cell::new(0),
            dma_bad_unmaps: Cell::new(0),
            vram_allocs: Cell::new(0),
            vram_releases: Cell::new(0),
            vram_bad_releases: Cell::new(0),
            clock: Cell::new(0),
        })
    }

    /// The clock: every read advances it by 1 µs (deterministic).
    pub fn now_ns(&self) -> u64 {
        let t = self.clock.get();
        self.clock.set(t.wrapping_add(1_000));
        t
    }

    /// Add `n` to a counter.
    pub fn bump(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }

    /// Subtract `n` from a counter (saturating at zero).
    pub fn drop_count(c: &Cell<u64>, n: u64) {
        c.set(c.get().saturating_sub(n));
    }

    // ---- system frames ----

    /// Allocate the lowest free system frame, zeroed.
    pub fn alloc_sys(&self) -> Result<u64, PhysError> {
        let mut p = self.sys.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        let i = (0..p.pages.len())
            .find(|&i| !p.is_used(i))
            .ok_or(PhysError::Full)?;
        p.set_used(i, true);
        if let Some(f) = p.pages.get_mut(i) {
            f.fill(0);
        }
        Ok(p.pfn(i))
    }

    /// Free a system frame. Errors: [`PhysError::BadFrame`] if it is not an allocated frame.
    pub fn free_sys(&self, pfn: u64) -> Result<(), PhysError> {
        let mut p = self.sys.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        let i = p.index(pfn).ok_or(PhysError::BadFrame)?;
        if !p.set_used(i, false) {
            return Err(PhysError::BadFrame);
        }
        Ok(())
    }

    /// Number of free system frames.
    pub fn sys_free(&self) -> usize {
        self.sys.try_borrow().map_or(0, |p| p.free_count())
    }

    /// Whether `pfn` is a system frame of the pool.
    pub fn is_sys(&self, pfn: u64) -> bool {
        self.sys.try_borrow().is_ok_and(|p| p.index(pfn).is_some())
    }

    /// Run `f` on system frame `pfn`.
    pub fn with_sys<R>(&self, pfn: u64, f: impl FnOnce(&mut Frame) -> R) -> Result<R, PhysError> {
        let mut p = self.sys.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        p.frame(pfn).map(f).ok_or(PhysError::BadFrame)
    }

    // ---- device memory ----

    /// Allocate `out.len()` device pages: one naturally aligned contiguous run if there is one
    /// (the run length rounded up to a power of two gives the alignment), else the lowest free
    /// pages. Errors: [`PhysError::Full`] (nothing allocated).
    pub fn alloc_vram(&self, out: &mut [u64]) -> Result<(), PhysError> {
        let mut p = self.vram.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        let n = out.len();
        let len = p.pages.len();
        if n == 0 || n > p.free_count() {
            return Err(PhysError::Full);
        }
        let align = n.next_power_of_two();
        let run = (0..len)
            .step_by(align)
            .find(|&s| s + n <= len && (s..s + n).all(|i| !p.is_used(i)));
        match run {
            Some(s) => {
                for (k, slot) in out.iter_mut().enumerate() {
                    *slot = p.pfn(s + k);
                }
            }
            None => {
                let mut free = (0..len).filter(|&i| !p.is_used(i));
                for slot in out.iter_mut() {
                    let i = free.next().ok_or(PhysError::Full)?;
                    *slot = p.pfn(i);
                }
            }
        }
        for &d in out.iter() {
            if let Some(i) = p.index(d) {
                p.set_used(i, true);
            }
        }
        Ok(())
    }

    /// Free device pages. Returns how many were not allocated (a bug of the caller).
    pub fn free_vram(&self, dpfns: &[u64]) -> usize {
        let Ok(mut p) = self.vram.try_borrow_mut() else {
            return dpfns.len();
        };
        let mut bad = 0usize;
        for &d in dpfns {
            match p.index(d) {
                Some(i) if p.set_used(i, false) => {}
                _ => bad += 1,
            }
        }
        bad
    }

    /// Number of allocated device pages.
    pub fn vram_used(&self) -> usize {
        self.vram
            .try_borrow()
            .map_or(usize::MAX, |p| p.pages.len() - p.free_count())
    }

    /// Run `f` on device page `dpfn`.
    pub fn with_vram<R>(&self, dpfn: u64, f: impl FnOnce(&mut Frame) -> R) -> Result<R, PhysError> {
        let mut p = self.vram.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        p.frame(dpfn).map(f).ok_or(PhysError::BadFrame)
    }

    /// Copy system frame `pfn` into device page `dpfn`.
    pub fn sys_to_vram(&self, pfn: u64, dpfn: u64) -> Result<(), PhysError> {
        let mut s = self.sys.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        let mut v = self.vram.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        let src = s.frame(pfn).ok_or(PhysError::BadFrame)?;
        let dst = v.frame(dpfn).ok_or(PhysError::BadFrame)?;
        dst.copy_from_slice(src);
        Ok(())
    }

    /// Copy device page `dpfn` into system frame `pfn`.
    pub fn vram_to_sys(&self, dpfn: u64, pfn: u64) -> Result<(), PhysError> {
        let mut s = self.sys.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        let mut v = self.vram.try_borrow_mut().map_err(|_| PhysError::Busy)?;
        let src = v.frame(dpfn).ok_or(PhysError::BadFrame)?;
        let dst = s.frame(pfn).ok_or(PhysError::BadFrame)?;
        dst.copy_from_slice(src);
        Ok(())
    }
}

/// Copy `data` into `frame` at byte `off`.
pub fn write_at(frame: &mut Frame, off: usize, data: &[u8]) -> Result<(), PhysError> {
    let end = off.checked_add(data.len()).ok_or(PhysError::Bounds)?;
    frame
        .get_mut(off..end)
        .ok_or(PhysError::Bounds)?
        .copy_from_slice(data);
    Ok(())
}

/// Copy bytes of `frame` from byte `off` into `buf`.
pub fn read_at(frame: &Frame, off: usize, buf: &mut [u8]) -> Result<(), PhysError> {
    let end = off.checked_add(buf.len()).ok_or(PhysError::Bounds)?;
    buf.copy_from_slice(frame.get(off..end).ok_or(PhysError::Bounds)?);
    Ok(())
}
