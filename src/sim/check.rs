//! The invariant checker: docs/DESIGN.md invariants 1, 2, 3 and 6 on a simulated machine (7 is
//! checked with a counting allocator, 8 by the tests comparing state before and after failed
//! calls).

use super::cpu::SimMm;
use super::device::SimGpu;
use super::lock;
use crate::pages::Protocol;
use crate::platform::{PAGE_SHIFT, PAGE_SIZE};
use crate::range::RangeFlags;
use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec::Vec;

/// Check the invariants of `gpus` mirroring `mm`; the first violation is returned.
///
/// 1. Ranges of a notifier lie inside it and never overlap; a range that is not unmapped lies
///    inside mapped VMAs.
/// 2. Every device page-table entry maps, through a live DMA mapping, exactly the frame the CPU
///    page table maps at that address (so nothing stale survives an invalidation), and is
///    writable only if the CPU mapping is writable, and allows device atomics only where the
///    atomic policy does. Unmapped ranges have no valid pages.
/// 3. Every live DMA mapping belongs to exactly one page entry of a valid range, maps live
///    frames, and the IOMMU never saw a bad or double unmap.
/// 6. A committed collection that an invalidation overlapped would show up as a device or DMA
///    mapping of a frame the CPU no longer maps at that address: caught by 2.
pub fn check_invariants(mm: &SimMm, gpus: &[&SimGpu]) -> Result<(), String> {
    let st = lock(&mm.st);
    for g in gpus {
        let dev = &g.dev;
        let viol = dev.dma_violations();
        if let Some(v) = viol.first() {
            return Err(format!("dev {}: IOMMU violation: {v}", dev.id()));
        }
        let maps: BTreeMap<u64, super::device::DmaMapping> = lock(&dev.iommu).maps.clone();
        // bus address -> (va of the entry start, order)
        let mut owned: BTreeMap<u64, (u64, u8)> = BTreeMap::new();
        let mut err: Option<String> = None;
        let mut prev_end: Option<(u64, u64)> = None;
        // va page -> (entry address for that page, protocol, writable entry)
        let mut valid_pages: BTreeMap<u64, (u64, Protocol, bool)> = BTreeMap::new();
        g.svm.for_each_range(|(ns, ne), r| {
            if err.is_some() {
                return;
            }
            if r.start() < ns || r.end() > ne {
                err = Some(format!(
                    "range {:#x}-{:#x} outside notifier",
                    r.start(),
                    r.end()
                ));
                return;
            }
            if let Some((pn, pe)) = prev_end {
                if pn == ns && r.start() < pe {
                    err = Some(format!("ranges overlap at {:#x}", r.start()));
                    return;
                }
            }
            prev_end = Some((ns, r.end()));
            let flags = r.flags();
            let pages = r.pages.lock();
            if flags.contains(RangeFlags::UNMAPPED) && pages.valid() {
                err = Some(format!("unmapped range {:#x} has valid pages", r.start()));
                return;
            }
            if !flags.contains(RangeFlags::UNMAPPED) {
                let mut at = r.start();
                while at < r.end() {
                    match st
                        .vmas
                        .range(..=at)
                        .next_back()
                        .map(|(_, v)| *v)
                        .filter(|v| at < v.end)
                    {
                        Some(v) => at = v.end,
                        None => {
                            err = Some(format!(
                                "live range {:#x}-{:#x} not covered by VMAs at {at:#x}",
                                r.start(),
                                r.end()
                            ));
                            return;
                        }
                    }
                }
            }
            if !pages.valid() {
                return;
            }
            let mut va = r.start();
            for e in pages.entries() {
                if e.protocol() != Protocol::DEVICE_LOCAL {
                    let peer = e.protocol() != Protocol::SYSTEM;
                    match maps.get(&e.addr()) {
                        Some(m) if m.order == e.order() && m.dir == e.dir() && m.peer == peer => {}
                        _ => {
                            err = Some(format!("entry {e:?} at {va:#x} has no live DMA mapping"));
                            return;
                        }
                    }
                    if owned.insert(e.addr(), (va, e.order())).is_some() {
                        err = Some(format!("DMA mapping {:#x} owned twice", e.addr()));
                        return;
                    }
                }
                for i in 0..e.npages() {
                    valid_pages.insert(
                        (va >> PAGE_SHIFT) + i,
                        (e.addr() + (i << PAGE_SHIFT), e.protocol(), e.writable()),
                    );
                }
                va += e.size();
            }
            if va != r.end() {
                err = Some(format!(
                    "entries of range {:#x}-{:#x} cover up to {va:#x}",
                    r.start(),
                    r.end()
                ));
            }
        });
        if let Some(e) = err {
            return Err(format!("dev {}: {e}", dev.id()));
        }
        let frames = lock(&mm.world().frames);
        for (addr, m) in &maps {
            if !owned.contains_key(addr) {
                return Err(format!(
                    "dev {}: DMA mapping {addr:#x} leaked (no range owns it)",
                    dev.id()
                ));
            }
            if !m.peer && !frames.all_live(m.pfn, m.order) {
                return Err(format!(
                    "dev {}: DMA mapping {addr:#x} of freed frames",
                    dev.id()
                ));
            }
        }
        // Coherence of every valid page with the CPU page table.
        for (vpn, (addr, proto, _)) in &valid_pages {
            if *proto == Protocol::DEVICE_LOCAL {
                let ok = st.ptes.get(vpn).is_some_and(|c| {
                    !c.migrating && c.dev.is_some() && c.pfn == addr >> PAGE_SHIFT
                });
                if !ok {
                    return Err(format!(
                        "dev {}: page {:#x} valid as device frame {:#x} but the CPU maps {:?}",
                        dev.id(),
                        vpn << PAGE_SHIFT,
                        addr >> PAGE_SHIFT,
                        st.ptes.get(vpn)
                    ));
                }
                continue;
            }
            if *proto != Protocol::SYSTEM {
                // A peer page: the peer mapping must reach the device frame the CPU maps.
                let io = lock(&dev.iommu);
                let target = io
                    .lookup(*addr)
                    .filter(|(_, m)| m.peer)
                    .map(|(b, m)| m.pfn + ((addr - b) >> PAGE_SHIFT));
                let ok = target.is_some_and(|d| {
                    st.ptes
                        .get(vpn)
                        .is_some_and(|c| !c.migrating && c.dev.is_some() && c.pfn == d)
                });
                if !ok {
                    return Err(format!(
                        "dev {}: page {:#x} peer-mapped to {target:?} but the CPU maps {:?}",
                        dev.id(),
                        vpn << PAGE_SHIFT,
                        st.ptes.get(vpn)
                    ));
                }
                continue;
            }
            let Some(cpu) = st.ptes.get(vpn) else {
                return Err(format!(
                    "dev {}: page {:#x} valid but not mapped by the CPU",
                    dev.id(),
                    vpn << PAGE_SHIFT
                ));
            };
            let io = lock(&dev.iommu);
            let Some((base, m)) = io.lookup(*addr) else {
                return Err(format!(
                    "dev {}: page {:#x} bus address dead",
                    dev.id(),
                    vpn << PAGE_SHIFT
                ));
            };
            let pfn = m.pfn + ((addr - base) >> PAGE_SHIFT);
            if pfn != cpu.pfn {
                return Err(format!(
                    "dev {}: page {:#x} maps frame {pfn:#x}, CPU maps {:#x} (stale)",
                    dev.id(),
                    vpn << PAGE_SHIFT,
                    cpu.pfn
                ));
            }
        }
        for (vpn, pte) in dev.ptes() {
            let Some((addr, proto, writable)) = valid_pages.get(&vpn).copied() else {
                return Err(format!(
                    "dev {}: device PTE at {:#x} outside valid pages",
                    dev.id(),
                    vpn << PAGE_SHIFT
                ));
            };
            if pte.addr != addr || pte.proto != proto || (pte.writable && !writable) {
                return Err(format!(
                    "dev {}: device PTE at {:#x} disagrees with page state",
                    dev.id(),
                    vpn << PAGE_SHIFT
                ));
            }
            if pte.writable {
                let cpu_w = st.ptes.get(&vpn).is_some_and(|c| c.writable && !c.cow);
                if !cpu_w {
                    return Err(format!(
                        "dev {}: device may write {:#x} but the CPU mapping is read-only",
                        dev.id(),
                        vpn << PAGE_SHIFT
                    ));
                }
            }
            if pte.atomic {
                let va = vpn << PAGE_SHIFT;
                let rights = crate::policy::device_atomics(
                    g.svm.attrs_at(va).atomic,
                    &g.svm.config().policy,
                );
                if !rights.allows_protocol(proto) {
                    return Err(format!(
                        "dev {}: device PTE at {va:#x} allows atomics the atomic policy forbids",
                        dev.id()
                    ));
                }
            }
        }
        drop(frames);
        check_devmem(&st, g)?;
    }
    Ok(())
}

/// Invariant 5 (and the device side of 4): every device page the CPU maps belongs to a live
/// allocation of its pagemap and is live in it; every allocation's live count equals the pages
/// the CPU still maps; device memory in use is exactly the live allocations (nothing released
/// early, nothing leaked); the device never released a frame twice.
fn check_devmem(st: &super::cpu::MmState, g: &SimGpu) -> Result<(), String> {
    let dev = &g.dev;
    if let Some(v) = dev.vram_violations().first() {
        return Err(format!("dev {}: device-memory violation: {v}", dev.id()));
    }
    let Some(pm) = g.svm.pagemap() else {
        return Ok(());
    };
    let allocs = pm
        .allocations()
        .map_err(|e| format!("dev {}: listing the allocations: {e:?}", dev.id()))?;
    let mut mapped: BTreeMap<u64, usize> = BTreeMap::new();
    for (vpn, p) in &st.ptes {
        let Some((pmid, _)) = p.dev else { continue };
        if pmid != pm.id() {
            continue;
        }
        let Some(k) = allocs.iter().position(|a| a.contains(p.pfn)) else {
            return Err(format!(
                "dev {}: CPU page {:#x} maps device frame {:#x} of no live allocation",
                dev.id(),
                vpn << PAGE_SHIFT,
                p.pfn
            ));
        };
        if !allocs[k].page_live(p.pfn) {
            return Err(format!(
                "dev {}: CPU page {:#x} maps device frame {:#x} already freed",
                dev.id(),
                vpn << PAGE_SHIFT,
                p.pfn
            ));
        }
        *mapped.entry(k as u64).or_default() += 1;
    }
    let mut live_frames: Vec<u64> = Vec::new();
    for (k, a) in allocs.iter().enumerate() {
        let m = mapped.get(&(k as u64)).copied().unwrap_or(0);
        if m != a.live_pages() {
            return Err(format!(
                "dev {}: allocation at {:#x} counts {} live pages, the CPU maps {m}",
                dev.id(),
                a.va().0,
                a.live_pages()
            ));
        }
        live_frames.extend(a.dpfns());
    }
    live_frames.sort_unstable();
    let used = dev.vram_used();
    if used != live_frames {
        return Err(format!(
            "dev {}: {} device frames in use but live allocations hold {}",
            dev.id(),
            used.len(),
            live_frames.len()
        ));
    }
    let _ = PAGE_SIZE;
    Ok(())
}

/// Check that nothing of `gpu` is left after close: no live DMA mapping, no device PTE, no
/// registered notifier of its sink, and the IOMMU saw every mapping unmapped exactly once.
pub fn check_closed(gpu: &SimGpu) -> Result<(), String> {
    let maps = gpu.dev.dma_mappings();
    if !maps.is_empty() {
        return Err(format!("{} DMA mappings left after close", maps.len()));
    }
    let (m, u) = gpu.dev.dma_counts();
    if m != u {
        return Err(format!("{m} maps but {u} unmaps"));
    }
    if let Some(v) = gpu.dev.dma_violations().first() {
        return Err(format!("IOMMU violation: {v}"));
    }
    if !gpu.dev.ptes().is_empty() {
        return Err(String::from("device PTEs left after close"));
    }
    let (n, r) = gpu.svm.counts();
    if n != 0 || r != 0 {
        return Err(format!("{n} notifiers and {r} ranges left after close"));
    }
    let _ = Vec::<u8>::new();
    Ok(())
}
