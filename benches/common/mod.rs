//! Shared by the `fault` and `concurrency` benchmarks: a fast bench platform and the ratio
//! report.
//!
//! The simulator (`gpusvm::sim`) is a test tool: its IOMMU records every mapping in a `BTreeMap`
//! and its CPU and device page tables are `BTreeMap`s, so a fault on it measures the simulator.
//! The platform here is what a lean driver backend costs:
//! - [`FastMm`]: one VMA over a flat `Vec` of frame numbers (the CPU page table; every page
//!   present and writable — the CPU touched them), order 0 or 9 (huge pages);
//! - [`IdentityDma`]: bus address = physical address, unmap does nothing;
//! - [`NullPt`]: a null zap;
//! - [`DevPt`]: a flat device page-table array (`AtomicU64`, relaxed stores = plain moves on
//!   x86) that the bind closure writes with [`DevPt::write`].
//!
//! Everything is `Sync` (the concurrency benchmark shares one `Svm` between threads).
// Each benchmark uses a part of this module.
#![allow(dead_code)]

use gpusvm::platform::{
    AddressSpace, CollectRequest, CpuPage, DeviceMemory, DevicePageTable, DmaDirection, DmaMapper,
    NoDeviceMemory, NotifierId, PageSink, Platform, Vma, VmaFlags, PAGE_SHIFT, PAGE_SIZE,
};
use gpusvm::{PageEntry, Range, Svm, SvmConfig};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// Where the VMA starts (aligned to the default 512 MiB notifier size).
pub const BASE: u64 = 1 << 40;
/// Frame number of the page at `BASE` (2 MiB aligned, so huge pages are naturally aligned).
pub const BASE_PFN: u64 = 0x10_0000;

/// Device PTE bits.
pub const DEV_VALID: u64 = 1;
pub const DEV_WRITE: u64 = 2;

/// The CPU address space: one read/write VMA `[BASE, BASE + len)` over a flat table of frame
/// numbers.
pub struct FastMm {
    pub start: u64,
    pub end: u64,
    /// Frame of each 4 KiB page (the CPU page table).
    pub pfns: Vec<u64>,
    /// Order of the CPU mappings (0: 4 KiB pages, 9: 2 MiB huge pages).
    pub order: u8,
    /// Live notifier registrations.
    pub notifiers: AtomicUsize,
    /// Notifier registrations so far.
    pub registrations: AtomicUsize,
}

impl FastMm {
    pub fn new(len: u64, order: u8) -> FastMm {
        let n = (len / PAGE_SIZE) as usize;
        FastMm {
            start: BASE,
            end: BASE + len,
            pfns: (0..n as u64).map(|i| BASE_PFN + i).collect(),
            order,
            notifiers: AtomicUsize::new(0),
            registrations: AtomicUsize::new(0),
        }
    }

    /// Index of the page at `addr` in the table.
    pub fn index(&self, addr: u64) -> usize {
        ((addr - self.start) >> PAGE_SHIFT) as usize
    }
}

impl AddressSpace for FastMm {
    type NotifierHandle = u64;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        (self.start <= addr && addr < self.end).then_some(Vma {
            start: self.start,
            end: self.end,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        })
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> gpusvm::Result<()> {
        if req.start < self.start || req.end > self.end || req.start >= req.end {
            return Err(gpusvm::Error::Fault);
        }
        let i0 = self.index(req.start);
        let src = self
            .pfns
            .get(i0..i0 + out.len())
            .ok_or(gpusvm::Error::Invalid)?;
        let order = self.order;
        for (o, &pfn) in out.iter_mut().zip(src) {
            *o = CpuPage::System {
                pfn,
                order,
                writable: true,
            };
        }
        Ok(())
    }

    /// The packed contract: one walk over the frame table, one report per CPU mapping.
    #[inline]
    fn collect_packed(&self, req: &CollectRequest, sink: &mut PageSink<'_>) -> gpusvm::Result<()> {
        if req.start < self.start || req.end > self.end || req.start >= req.end {
            return Err(gpusvm::Error::Fault);
        }
        let i0 = self.index(req.start);
        let n = ((req.end - req.start) >> PAGE_SHIFT) as usize;
        let src = self.pfns.get(i0..i0 + n).ok_or(gpusvm::Error::Invalid)?;
        let order = self.order;
        if order == 0 {
            sink.push_base_pages(src, true);
        } else {
            while sink.remaining() > 0 {
                let pfn = src[sink.next_page() as usize];
                sink.push_system(pfn, order, true);
            }
        }
        Ok(())
    }

    fn register_notifier(&self, id: NotifierId, _: u64, _: u64) -> gpusvm::Result<u64> {
        self.notifiers.fetch_add(1, Ordering::Relaxed);
        self.registrations.fetch_add(1, Ordering::Relaxed);
        Ok(id.0)
    }

    fn unregister_notifier(&self, _: u64) {
        self.notifiers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identity DMA: the bus address of a frame is its physical address.
pub struct IdentityDma;
impl DmaMapper for IdentityDma {
    #[inline]
    fn map_page(&self, pfn: u64, _: u8, _: DmaDirection) -> gpusvm::Result<u64> {
        Ok(pfn << PAGE_SHIFT)
    }
    #[inline]
    fn unmap_page(&self, _: u64, _: u8, _: DmaDirection) {}
}

/// A null zap.
pub struct NullPt;
impl DevicePageTable for NullPt {
    #[inline]
    fn zap(&self, _: u64, _: u64) {}
}

/// A lean platform over the address space `M`: identity DMA, a null zap, device memory of type
/// `D` (none by default; a pagemap of `D` is attached to the `Svm` separately).
pub struct LeanPlatform<M, D = NoDeviceMemory> {
    pub mm: M,
    pub dma: IdentityDma,
    pub pt: NullPt,
    pub mem: PhantomData<fn() -> D>,
}

impl<M, D> LeanPlatform<M, D> {
    pub fn new(mm: M) -> Self {
        LeanPlatform {
            mm,
            dma: IdentityDma,
            pt: NullPt,
            mem: PhantomData,
        }
    }
}

/// The fault benchmarks' platform: [`FastMm`] without device memory.
pub type FastPlatform = LeanPlatform<FastMm>;

impl<M: AddressSpace, D: DeviceMemory> Platform for LeanPlatform<M, D> {
    type Mm = M;
    type Dma = IdentityDma;
    type Pt = NullPt;
    type Mem = D;
    type Host = gpusvm::DefaultHost;
    fn mm(&self) -> &M {
        &self.mm
    }
    fn dma(&self) -> &IdentityDma {
        &self.dma
    }
    fn page_table(&self) -> &NullPt {
        &self.pt
    }
    /// A frozen clock (the retry budget then ends on `max_attempts`); not what is measured.
    fn now_ns(&self) -> u64 {
        0
    }
}

/// An `Svm` over a fast platform with a VMA of `len` bytes at [`BASE`], default configuration.
pub fn fast_svm(len: u64, order: u8) -> Svm<FastPlatform> {
    Svm::new(
        FastPlatform::new(FastMm::new(len, order)),
        SvmConfig::new(0, 1 << 47),
    )
    .expect("svm")
}

/// The device page table: one entry per 4 KiB page of the VMA.
pub struct DevPt {
    pub start: u64,
    pub ptes: Vec<AtomicU64>,
}

impl DevPt {
    pub fn new(len: u64) -> DevPt {
        DevPt {
            start: BASE,
            ptes: (0..len / PAGE_SIZE).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The driver's bind step: write the PTEs of `range` from its entries (a 2^order entry
    /// fills 2^order PTEs). Returns the number of PTEs written.
    #[inline]
    pub fn write(&self, range: &Range, entries: &[PageEntry]) -> usize {
        let i = ((range.start() - self.start) >> PAGE_SHIFT) as usize;
        let ptes = &self.ptes[i..];
        if let Some(dst) = ptes.get(..entries.len()) {
            // Or-ed orders (no early exit, so the check vectorises): 0 when every entry is a
            // base page.
            if entries.iter().fold(0u8, |a, e| a | e.order()) == 0 {
                // Base pages only: one PTE per entry.
                for (pte, e) in dst.iter().zip(entries) {
                    let flags = DEV_VALID | if e.writable() { DEV_WRITE } else { 0 };
                    pte.store(e.addr() | flags, Ordering::Relaxed);
                }
                return entries.len();
            }
        }
        let mut k = 0;
        for e in entries {
            let flags = DEV_VALID | if e.writable() { DEV_WRITE } else { 0 };
            if e.order() == 0 {
                ptes[k].store(e.addr() | flags, Ordering::Relaxed);
                k += 1;
                continue;
            }
            let n = e.npages() as usize;
            let mut a = e.addr() | flags;
            for pte in &ptes[k..k + n] {
                pte.store(a, Ordering::Relaxed);
                a += PAGE_SIZE;
            }
            k += n;
        }
        k
    }

    /// The baseline: read the `n` CPU page-table entries from `first` and write `n` device
    /// addresses.
    #[inline]
    pub fn baseline(&self, pfns: &[u64], first: usize, n: usize) -> usize {
        let src = &pfns[first..first + n];
        let dst = &self.ptes[first..first + n];
        for (pte, &pfn) in dst.iter().zip(src) {
            pte.store(
                (pfn << PAGE_SHIFT) | DEV_VALID | DEV_WRITE,
                Ordering::Relaxed,
            );
        }
        n
    }

    /// Number of valid PTEs in `[start, end)`.
    pub fn valid(&self, start: u64, end: u64) -> usize {
        let a = ((start - self.start) >> PAGE_SHIFT) as usize;
        let b = ((end - self.start) >> PAGE_SHIFT) as usize;
        self.ptes[a..b]
            .iter()
            .filter(|p| p.load(Ordering::Relaxed) & DEV_VALID != 0)
            .count()
    }
}

// ---- Ratios of criterion medians measured in this run. ----

static START: OnceLock<SystemTime> = OnceLock::new();

/// Call first in `main`: estimates older than this are not from this run.
pub fn start() {
    START.get_or_init(SystemTime::now);
}

fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    let target: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "target".into());
    target.join("criterion")
}

/// The median (ns) criterion estimated for `group/id` in this run, if it ran.
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < *START.get()? {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    // {"mean":{..},"median":{"confidence_interval":{..},"point_estimate":X,..},..}
    let med = &text[text.find("\"median\"")?..];
    let pe = &med[med.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = pe.find([',', '}'])?;
    pe[..end].trim().parse().ok()
}

pub fn fmt_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

/// One ratio to report: `group/num` over `group/den`, with its target (`None`: informative).
pub struct Ratio<'a> {
    pub group: &'a str,
    pub num: &'a str,
    pub den: &'a str,
    pub target: Option<f64>,
}

/// Print each ratio of medians measured in this run (skipped if either side did not run).
pub fn report(title: &str, ratios: &[Ratio<'_>]) {
    println!("\n=== {title}: ratios of criterion medians measured in this run");
    for r in ratios {
        let (Some(a), Some(b)) = (median_ns(r.group, r.num), median_ns(r.group, r.den)) else {
            println!("  {}/{} vs {}: not run", r.group, r.num, r.den);
            continue;
        };
        let x = a / b;
        let verdict = match r.target {
            Some(t) if x <= t => format!("target <= {t}x: met"),
            Some(t) => format!("target <= {t}x: MISSED by {:.2}x", x / t),
            None => "informative".to_string(),
        };
        println!(
            "  {}: {} ({}) / {} ({}) = {:.2}x  [{}]",
            r.group,
            r.num,
            fmt_ns(a),
            r.den,
            fmt_ns(b),
            x,
            verdict
        );
    }
}

// ---- Paired, interleaved measurement. ----

/// Medians of a paired measurement: `a` and `b` timed alternately, round after round, so that
/// a change in machine load (the machine is shared) hits both sides alike.
pub struct Paired {
    /// Median ns per operation of `a`.
    pub a_ns: f64,
    /// Median ns per operation of `b`.
    pub b_ns: f64,
    /// Median over rounds of `a / b` measured in the same round.
    pub ratio: f64,
    pub rounds: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|x, y| x.total_cmp(y));
    v[v.len() / 2]
}

/// Whether criterion runs in test mode (`--test`, e.g. `cargo test --benches`): then paired
/// measurements run only a couple of rounds.
pub fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test" || a == "--list")
}

/// Time `a` and `b` alternately for `rounds` rounds (after a short warm-up); each closure runs
/// some operations, times what it wants timed and returns ns per operation.
pub fn paired(rounds: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> Paired {
    let rounds = if test_mode() { 2 } else { rounds.max(1) };
    for _ in 0..rounds.div_ceil(10) {
        a();
        b();
    }
    let (mut va, mut vb, mut vr) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let (x, y) = if i % 2 == 0 {
            let x = a();
            (x, b())
        } else {
            let y = b();
            (a(), y)
        };
        va.push(x);
        vb.push(y);
        vr.push(x / y);
    }
    Paired {
        a_ns: median(&mut va),
        b_ns: median(&mut vb),
        ratio: median(&mut vr),
        rounds,
    }
}

/// Print a paired result with its target.
pub fn print_paired(what: &str, a: &str, b: &str, p: &Paired, target: Option<f64>) {
    let verdict = match target {
        Some(t) if p.ratio <= t => format!("target <= {t}x: met"),
        Some(t) => format!("target <= {t}x: MISSED by {:.2}x", p.ratio / t),
        None => "informative".to_string(),
    };
    println!(
        "  paired {what}: {a} {} / {b} {} = {:.2}x (median of {} interleaved rounds)  [{verdict}]",
        fmt_ns(p.a_ns),
        fmt_ns(p.b_ns),
        p.ratio,
        p.rounds
    );
}

/// Time `n` runs of `f`, ns per run.
#[inline]
pub fn per_op(n: u32, mut f: impl FnMut()) -> f64 {
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed().as_nanos() as f64 / f64::from(n)
}
