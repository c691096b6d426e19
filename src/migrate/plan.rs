//! Pure helpers of the migration state machine: DMA chunking, copy-run building and the page
//! orders to install.

use crate::error::{Error, Result};
use crate::heap::{AllocCtx, Allocator, Vec};
use crate::platform::{
    AddressSpace, CopyKind, CopyRun, DmaDirection, DmaMapper, MigrateDst, MigrateRequest,
    MigrateSrc, PagemapId, HUGE_ORDER, PAGE_SHIFT, PAGE_SIZE,
};

/// Drive a migration state machine: from `start`, `step` gives the next state until `done`;
/// every state entered, `done` included, is reported to `trace`.
pub(crate) fn run_states<S: Copy + PartialEq>(
    start: S,
    done: S,
    mut trace: Option<&mut dyn FnMut(S)>,
    mut step: impl FnMut(S) -> S,
) {
    let mut state = start;
    loop {
        if let Some(t) = trace.as_mut() {
            t(state);
        }
        if state == done {
            return;
        }
        state = step(state);
    }
}

/// The source slots of a migration of `[start, end)`, all [`MigrateSrc::Skip`]. Errors:
/// [`Error::Invalid`] for an empty or misaligned interval, [`Error::NoMem`].
///
/// Context: allocates with [`AllocCtx::MaySleep`].
pub(crate) fn source_slots<A: Allocator>(start: u64, end: u64) -> Result<Vec<MigrateSrc, A>> {
    if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
        return Err(Error::Invalid);
    }
    let n = usize::try_from(end.wrapping_sub(start) / PAGE_SIZE).map_err(|_| Error::Invalid)?;
    let mut src = Vec::new();
    src.reserve_exact(n, AllocCtx::MaySleep)?;
    src.resize(n, MigrateSrc::Skip, AllocCtx::MaySleep)?;
    Ok(src)
}

/// Put every isolated source of a migration back (the restore edge of both state machines).
/// Without memory for the destination array it restores page by page: the sources must come
/// back whatever happens.
///
/// Context: tries one allocation with [`AllocCtx::MaySleep`] (its failure is handled).
pub(crate) fn restore_sources<A: AddressSpace, H: Allocator>(
    mm: &A,
    req: &MigrateRequest,
    src: &[MigrateSrc],
) {
    let mut keep: Vec<MigrateDst, H> = Vec::new();
    if keep
        .resize(src.len(), MigrateDst::Keep, AllocCtx::MaySleep)
        .is_ok()
    {
        mm.migrate_finalize(req, src, &keep);
        return;
    }
    for (i, s) in src.iter().enumerate() {
        let a = req.start.wrapping_add((i as u64) << PAGE_SHIFT);
        let one = MigrateRequest {
            start: a,
            end: a.wrapping_add(PAGE_SIZE),
            ..*req
        };
        mm.migrate_finalize(&one, core::slice::from_ref(s), &[MigrateDst::Keep]);
    }
}

/// Orders tried when chunking, largest first (2 MiB, 64 KiB, 4 KiB).
pub(crate) const ORDERS: [u8; 3] = [HUGE_ORDER, 4, 0];

/// A DMA mapping of slots `[first, first + 2^order)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmaChunk {
    pub(crate) first: usize,
    pub(crate) order: u8,
    pub(crate) bus: u64,
}

/// Whether slots `[i, i + 2^order)` hold frames `f, f+1, ...` with `f` aligned to the order
/// (`frame` gives a slot's frame, `None` for a slot without one).
fn contiguous<T>(slots: &[T], frame: &impl Fn(&T) -> Option<u64>, i: usize, order: u8) -> bool {
    let n = 1usize << order;
    let Some(first) = slots.get(i).and_then(frame) else {
        return false;
    };
    if first.trailing_zeros() < u32::from(order) {
        return false;
    }
    let Some(end) = i.checked_add(n) else {
        return false;
    };
    match slots.get(i..end) {
        Some(s) => s
            .iter()
            .enumerate()
            .all(|(k, f)| frame(f) == first.checked_add(k as u64)),
        None => false,
    }
}

/// DMA-map the frames of every slot that has one (`frame`) in naturally aligned chunks as
/// large as contiguity allows. On error, everything mapped so far is unmapped and `out` is
/// left empty.
///
/// Context: allocates `out`'s growth with [`AllocCtx::MaySleep`].
pub(crate) fn map_chunks<D: DmaMapper, T, A: Allocator>(
    dma: &D,
    slots: &[T],
    frame: impl Fn(&T) -> Option<u64>,
    dir: DmaDirection,
    out: &mut Vec<DmaChunk, A>,
) -> Result<()> {
    let mut i = 0usize;
    while let Some(slot) = slots.get(i) {
        let Some(pfn) = frame(slot) else {
            i = i.saturating_add(1);
            continue;
        };
        let order = ORDERS
            .iter()
            .copied()
            .find(|&o| contiguous(slots, &frame, i, o))
            .unwrap_or(0);
        let bus = match dma.map_page(pfn, order, dir) {
            Ok(b) => b,
            Err(e) => {
                unmap_chunks(dma, out, dir);
                return Err(e);
            }
        };
        let chunk = DmaChunk {
            first: i,
            order,
            bus,
        };
        if let Err(e) = out.push(chunk, AllocCtx::MaySleep) {
            dma.unmap_page(bus, order, dir);
            unmap_chunks(dma, out, dir);
            return Err(e);
        }
        i = i.saturating_add(1usize << order);
    }
    Ok(())
}

/// Unmap and forget every chunk.
pub(crate) fn unmap_chunks<D: DmaMapper, A: Allocator>(
    dma: &D,
    chunks: &mut Vec<DmaChunk, A>,
    dir: DmaDirection,
) {
    for c in chunks.iter() {
        dma.unmap_page(c.bus, c.order, dir);
    }
    chunks.clear();
}

/// Bus address of slot `i` (chunks are sorted by `first`).
pub(crate) fn bus_of(chunks: &[DmaChunk], i: usize) -> Option<u64> {
    let k = chunks.partition_point(|c| c.first <= i);
    let c = chunks.get(k.checked_sub(1)?)?;
    let off = i.checked_sub(c.first)?;
    (off < (1usize << c.order)).then(|| c.bus.wrapping_add((off as u64) << PAGE_SHIFT))
}

/// Build maximal copy runs from per-slot `(engine, kind, src, dst)` (addresses page aligned;
/// `None` slots are skipped and break runs; a run never spans two engines).
///
/// Errors: [`Error::NoMem`] (`out` then holds the runs built so far; the caller discards it).
///
/// Context: allocates `out`'s growth with [`AllocCtx::MaySleep`].
pub(crate) fn build_runs<A: Allocator>(
    slots: impl Iterator<Item = Option<(PagemapId, CopyKind, u64, u64)>>,
    out: &mut Vec<(PagemapId, CopyRun), A>,
) -> Result<()> {
    let mut cur: Option<(PagemapId, CopyRun)> = None;
    for s in slots {
        match (s, cur.as_mut()) {
            (Some((eng, kind, src, dst)), Some((ceng, r)))
                if *ceng == eng
                    && r.kind == kind
                    && Some(dst) == r.dst.checked_add(r.npages.saturating_mul(PAGE_SIZE))
                    && (kind == CopyKind::ZeroDevice
                        || Some(src) == r.src.checked_add(r.npages.saturating_mul(PAGE_SIZE))) =>
            {
                r.npages = r.npages.saturating_add(1);
            }
            (s, _) => {
                if let Some(r) = cur.take() {
                    out.push(r, AllocCtx::MaySleep)?;
                }
                cur = s.map(|(eng, kind, src, dst)| {
                    (
                        eng,
                        CopyRun {
                            kind,
                            src,
                            dst,
                            npages: 1,
                        },
                    )
                });
            }
        }
    }
    if let Some(r) = cur {
        out.push(r, AllocCtx::MaySleep)?;
    }
    Ok(())
}

/// Total bytes of a set of runs.
pub(crate) fn run_bytes(runs: &[(PagemapId, CopyRun)]) -> u64 {
    runs.iter().fold(0u64, |b, (_, r)| {
        b.saturating_add(r.npages.saturating_mul(PAGE_SIZE))
    })
}

/// The order to install for each page of a migration to device memory starting at virtual
/// page `va_page`: the largest of 2 MiB / 64 KiB / 4 KiB whose block is aligned in both virtual
/// address and device frame and whose frames are contiguous.
///
/// Errors: [`Error::NoMem`].
///
/// Context: allocates `out` once, with [`AllocCtx::MaySleep`].
pub(crate) fn install_orders<A: Allocator>(
    va_page: u64,
    dpfns: &[u64],
    out: &mut Vec<u8, A>,
) -> Result<()> {
    out.clear();
    out.reserve_exact(dpfns.len(), AllocCtx::MaySleep)?;
    let frame = |d: &u64| Some(*d);
    let mut i = 0usize;
    while i < dpfns.len() {
        let va = va_page.wrapping_add(i as u64);
        let order = ORDERS
            .iter()
            .copied()
            .find(|&o| va.trailing_zeros() >= u32::from(o) && contiguous(dpfns, &frame, i, o))
            .unwrap_or(0);
        let n = 1usize << order;
        // A block never reaches past the end (`contiguous` checks), so this never grows.
        for _ in 0..n {
            out.push(order, AllocCtx::MaySleep)?;
        }
        i = i.saturating_add(n);
    }
    out.truncate(dpfns.len());
    Ok(())
}

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use super::*;
    use crate::heap::Global;

    #[test]
    fn runs_merge_contiguous_pages_only() {
        let mut out: Vec<_, Global> = Vec::new();
        let e = PagemapId(0);
        let slots = [
            Some((e, CopyKind::RamToDevice, 0x1000, 0x10000)),
            Some((e, CopyKind::RamToDevice, 0x2000, 0x11000)),
            Some((e, CopyKind::RamToDevice, 0x9000, 0x12000)),
            None,
            Some((e, CopyKind::ZeroDevice, 0, 0x14000)),
            Some((e, CopyKind::ZeroDevice, 0, 0x15000)),
            Some((PagemapId(1), CopyKind::ZeroDevice, 0, 0x16000)),
        ];
        build_runs(slots.into_iter(), &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].1.npages, 2);
        assert_eq!(out[1].1.npages, 1);
        assert_eq!(out[2].1.npages, 2);
        assert_eq!(out[3].0, PagemapId(1), "a run never spans two engines");
    }

    #[test]
    fn install_orders_follow_alignment() {
        let mut o: Vec<u8, Global> = Vec::new();
        let d: std::vec::Vec<u64> = (512..1024).collect();
        install_orders(512, &d, &mut o).unwrap();
        assert!(o.iter().all(|&x| x == 9));
        install_orders(16, &d[..16], &mut o).unwrap();
        assert!(o.iter().all(|&x| x == 4));
        install_orders(17, &d[1..17], &mut o).unwrap();
        assert!(o.iter().all(|&x| x == 0));
        let scattered = [5, 9, 100];
        install_orders(0, &scattered, &mut o).unwrap();
        assert_eq!(&o[..], &[0, 0, 0]);
    }
}
