//! The set-up of the scenarios: [`Fx`], a machine with its devices, mappings and the data
//! the CPU wrote, and what a step may ask of it.

use gpusvm::platform::Platform;
use gpusvm::platform::{VmaFlags, PAGE_SIZE};
use gpusvm::sim::{check_closed, check_invariants, SimGpu, SimMm, SimWorld};
use gpusvm::sim::{SimHost, SimPagemapArc};
use gpusvm::{Access, Result, SvmConfig, Userptr, Window};
use std::sync::Arc;

pub(crate) const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
pub(crate) const P: u64 = PAGE_SIZE;
pub(crate) const K64: u64 = 64 << 10;
/// Where the scenarios map their memory (2 MiB aligned).
pub(crate) const BUF: u64 = 0x40_0000_0000;
/// Device memory of each device, in pages.
pub(crate) const VRAM: u64 = 64;

/// A set-up machine: the state a step starts from.
pub(crate) struct Fx {
    pub(crate) world: Arc<SimWorld>,
    pub(crate) mm: Arc<SimMm>,
    pub(crate) gpus: Vec<SimGpu>,
    /// The interval the scenario works on (placement is reported over it).
    pub(crate) buf: u64,
    pub(crate) len: u64,
    /// What the CPU wrote: (address, value). Must read back unchanged after every step.
    pub(crate) data: Vec<(u64, u64)>,
    /// A userptr over the interval and the device it maps pages for (not among `gpus`: the
    /// invariant checker knows only `Svm` ranges), for the userptr scenario.
    pub(crate) userptr: Option<(Userptr<SimHost>, SimGpu)>,
    /// A pagemap no device knows, for the attach scenario.
    pub(crate) pagemap: Option<SimPagemapArc>,
}

pub(crate) fn tag(addr: u64) -> u64 {
    addr ^ 0x5EED_0000_0000_0000
}

/// A device configuration: the default one, with device memory preferred or not.
pub(crate) fn cfg(prefer_devmem: bool) -> SvmConfig {
    let mut c = SvmConfig::new(0, 1 << 47);
    c.prefer_devmem = prefer_devmem;
    c
}

impl Fx {
    /// A machine with devices `gpus(mm)`, a `len`-byte RW mapping, and a CPU write of a tag to
    /// the first word of each of its pages.
    pub(crate) fn new(
        len: u64,
        gpus: impl FnOnce(&Arc<SimWorld>, &Arc<SimMm>) -> Vec<SimGpu>,
    ) -> Fx {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpus = gpus(&world, &mm);
        let buf = mm.mmap_fixed(BUF, len, RW, false).expect("mmap");
        let mut data = Vec::new();
        for a in (buf..buf + len).step_by(P as usize) {
            mm.write_u64(a, tag(a)).expect("cpu write");
            data.push((a, tag(a)));
        }
        Fx {
            world,
            mm,
            gpus,
            buf,
            len,
            data,
            userptr: None,
            pagemap: None,
        }
    }

    /// One device without device memory.
    pub(crate) fn ram(len: u64) -> Fx {
        Fx::new(len, |_, mm| {
            vec![SimGpu::new(mm, 0, cfg(false)).expect("device")]
        })
    }

    /// One device with device memory, preferring it (or not) for faulting ranges.
    pub(crate) fn devmem(len: u64, prefer: bool) -> Fx {
        Fx::new(len, |_, mm| {
            let g = SimGpu::new(mm, 0, cfg(prefer)).expect("device");
            g.add_devmem(VRAM, 0).expect("device memory");
            vec![g]
        })
    }

    /// Two devices with device memory preferring it, linked (one owner, peer access) or not.
    pub(crate) fn two(len: u64, link: bool) -> Fx {
        Fx::two_with(len, link, cfg(true))
    }

    /// [`Fx::two`] with a device configuration.
    pub(crate) fn two_with(len: u64, link: bool, config: SvmConfig) -> Fx {
        Fx::new(len, |world, mm| {
            if link {
                world.link(0, 1);
            }
            (0..2)
                .map(|id| SimGpu::join_with(mm, id, VRAM, config.clone()).expect("device"))
                .collect()
        })
    }

    pub(crate) fn g(&self, i: usize) -> &SimGpu {
        &self.gpus[i]
    }

    /// Device `i` faults `addr` in (`access`) and binds it, as a driver's fault handler does.
    /// Returns what an API user sees: the range (relative to `buf`) and the bytes bound.
    pub(crate) fn fault(&self, i: usize, addr: u64, access: Access) -> Result<String> {
        let g = self.g(i);
        let (r, bytes) = g
            .svm
            .handle_fault_and_bind(addr, access, Window::ALL, |r, e| g.write_ptes(r, e))?;
        Ok(format!(
            "range [{:#x}, {:#x}) bound {bytes:#x}",
            r.start() - self.buf,
            r.end() - self.buf
        ))
    }

    /// Fault every 64 KiB of the interval in on device `i` (set-up).
    pub(crate) fn fault_all(&self, i: usize) {
        for a in (self.buf..self.buf + self.len).step_by(K64 as usize) {
            self.fault(i, a, Access::Read).expect("set-up fault");
        }
    }

    /// The range of device `i` at `addr`.
    pub(crate) fn range(
        &self,
        i: usize,
        addr: u64,
    ) -> gpusvm::range::RangeArc<gpusvm::sim::SimHost> {
        self.g(i).svm.find(addr).expect("a range")
    }

    /// Where each page of the interval is — `R` system memory, a digit the device whose memory
    /// holds it, `-` absent, `M` isolated for migration — and the device frames in use.
    pub(crate) fn placement(&self) -> String {
        let mut s = String::new();
        for a in (self.buf..self.buf + self.len).step_by(P as usize) {
            s.push(match self.mm.pte(a) {
                None => '-',
                Some(p) if p.migrating => 'M',
                Some(p) => match p.dev {
                    Some((pm, _)) => char::from_digit(pm.0 % 10, 10).unwrap_or('?'),
                    None => 'R',
                },
            });
        }
        for g in &self.gpus {
            s.push_str(&format!(" vram{}={}", g.dev.id(), g.dev.vram_used().len()));
        }
        s
    }

    /// The word at `addr`, read without side effects: a present system page through the CPU
    /// (no fault), a device page straight from its device memory.
    pub(crate) fn peek(&self, addr: u64) -> std::result::Result<u64, String> {
        let p = self
            .mm
            .pte(addr)
            .ok_or_else(|| format!("page of {addr:#x} is gone"))?;
        if p.migrating || p.placeholder {
            return Err(format!("page of {addr:#x} left isolated for migration"));
        }
        match p.dev {
            Some((pm, _)) => {
                let dev = self
                    .world
                    .device(pm.0)
                    .ok_or_else(|| format!("no device {} for {addr:#x}", pm.0))?;
                dev.vram_read_u64(p.pfn, (addr % P) as usize)
                    .map_err(|e| format!("device frame of {addr:#x}: {e:?}"))
            }
            None => self
                .mm
                .read_u64(addr)
                .map_err(|e| format!("CPU read of {addr:#x}: {e:?}")),
        }
    }

    /// The invariants, and the data the CPU wrote.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let gpus: Vec<&SimGpu> = self.gpus.iter().collect();
        check_invariants(&self.mm, &gpus)?;
        if let Some((u, g)) = &self.userptr {
            // Without valid pages nothing is mapped (a failed collection leaks no mapping).
            let maps = g.dev.dma_mappings().len();
            if !u.pages_valid() && maps != 0 {
                return Err(format!("userptr: {maps} DMA mappings without valid pages"));
            }
            if let Some(v) = g.dev.dma_violations().first() {
                return Err(format!("userptr: IOMMU violation: {v}"));
            }
        }
        for &(a, v) in &self.data {
            let got = self.peek(a)?;
            if got != v {
                return Err(format!(
                    "{addr:#x} reads {got:#x}, written {v:#x}",
                    addr = a
                ));
            }
        }
        Ok(())
    }

    /// Every device reads every written word (faulting and binding as needed), then the CPU.
    pub(crate) fn read_back(&self) -> std::result::Result<(), String> {
        for g in &self.gpus {
            if g.svm.is_closed() {
                continue;
            }
            for &(a, v) in &self.data {
                let got = g
                    .read_u64(a)
                    .map_err(|e| format!("dev {} read of {a:#x}: {e:?}", g.dev.id()))?;
                if got != v {
                    return Err(format!(
                        "dev {} reads {got:#x} at {a:#x}, not {v:#x}",
                        g.dev.id()
                    ));
                }
            }
        }
        for &(a, v) in &self.data {
            let got = self
                .mm
                .read_u64(a)
                .map_err(|e| format!("CPU read of {a:#x}: {e:?}"))?;
            if got != v {
                return Err(format!("CPU reads {got:#x} at {a:#x}, not {v:#x}"));
            }
        }
        self.check()
    }

    /// Close every device, check that nothing is left, drop everything.
    pub(crate) fn teardown(self) -> std::result::Result<(), String> {
        if let Some((u, g)) = &self.userptr {
            u.free_pages(g.svm.platform().dma());
            if !g.dev.dma_mappings().is_empty() {
                return Err(String::from("userptr: DMA mappings left after free_pages"));
            }
            g.svm.close();
        }
        for g in &self.gpus {
            g.svm.close();
            check_closed(g).map_err(|e| format!("dev {} after close: {e}", g.dev.id()))?;
        }
        drop(self);
        Ok(())
    }
}
