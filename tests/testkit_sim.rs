//! The conformance kit (`gpusvm::testkit`) against the simulator: every scenario group on
//! several machine configurations (one device in system memory only, with device memory, with
//! huge pages, two linked devices, two unlinked devices). Each report must have no failure,
//! the expected number of passes, and no skip where the configuration has the capability.
//!
//! These are the simulator's contract scenarios: the smoke tests of the fault path, device
//! memory and two devices, closing with live mappings and `remove`, and the whole-range munmap
//! of tests/sim_fault_path.rs were ported into the kit (what stayed in tests/ needs the
//! simulator's own facilities: copy-engine counts, fixed-address mappings, `mprotect`,
//! `MADV_DONTNEED`, fork, dropping an `Svm`, DMA-mapping orders). The simulator's invariant
//! checker runs after every step (`SimBackend::self_check`).
//!
//! The last tests check the kit itself: a backend that lies (corrupt CPU reads, hidden device
//! page-table entries, a leaked DMA mapping, a failing self-check) gets failures, as values.
#![cfg(feature = "sim")]

use gpusvm::platform::VmaFlags;
use gpusvm::sim::SimPlatform;
use gpusvm::testkit::sim::SimBackend;
use gpusvm::testkit::{self, Backend, MappedPage, Report};
use gpusvm::{Access, Result, Svm, SvmConfig};

const VRAM: u64 = 4096;

#[derive(Clone, Copy, Debug)]
enum Machine {
    Ram,
    RamHuge,
    /// Small chunks (64 KiB / 4 KiB) and no page-presence threshold.
    RamSmallChunks,
    Devmem,
    DevmemHuge,
    Linked,
    Unlinked,
}

impl Machine {
    fn make(self) -> impl FnMut() -> Result<SimBackend> {
        move || match self {
            Machine::Ram => SimBackend::ram_only(),
            Machine::RamHuge => SimBackend::ram_only().map(SimBackend::with_huge_pages),
            Machine::RamSmallChunks => {
                let mut cfg = SvmConfig::new(0, 1 << 47).with_chunk_sizes(&[64 << 10, 4096])?;
                cfg.check_pages_threshold = 0;
                SimBackend::with_config(cfg)
            }
            Machine::Devmem => SimBackend::with_devmem(VRAM),
            Machine::DevmemHuge => SimBackend::with_devmem(VRAM).map(SimBackend::with_huge_pages),
            Machine::Linked => SimBackend::pair(VRAM, true),
            Machine::Unlinked => SimBackend::pair(VRAM, false),
        }
    }
    fn devmem(self) -> bool {
        matches!(
            self,
            Machine::Devmem | Machine::DevmemHuge | Machine::Linked | Machine::Unlinked
        )
    }
}

const ALL: [Machine; 7] = [
    Machine::Ram,
    Machine::RamHuge,
    Machine::RamSmallChunks,
    Machine::Devmem,
    Machine::DevmemHuge,
    Machine::Linked,
    Machine::Unlinked,
];

fn expect(group: &str, m: Machine, r: Report, passed: u32) {
    println!("{group} on {m:?}: {r}");
    assert!(r.ok(), "{group} on {m:?}: {r}");
    assert_eq!(r.failed, 0, "{group} on {m:?}: {r}");
    assert_eq!(r.passed, passed, "{group} on {m:?}: {r}");
}

#[test]
fn fault() {
    for m in ALL {
        expect("fault", m, testkit::run_fault(m.make()), 4);
    }
}

#[test]
fn invalidation() {
    for m in ALL {
        expect("invalidation", m, testkit::run_invalidation(m.make()), 3);
    }
}

#[test]
fn gc() {
    for m in ALL {
        expect("gc", m, testkit::run_gc(m.make()), 3);
    }
}

#[test]
fn migration() {
    for m in ALL {
        let want = if m.devmem() { 3 } else { 0 };
        let r = testkit::run_migration(m.make());
        expect("migration", m, r, want);
        assert_eq!(r.skipped, 3 - want, "{m:?}: {r}");
    }
}

#[test]
fn device_to_device() {
    for m in ALL {
        let r = testkit::run_device_to_device(m.make());
        let want = match m {
            Machine::Linked => 2,
            Machine::Unlinked => 1,
            _ => 0,
        };
        expect("device_to_device", m, r, want);
        assert_eq!(r.skipped, 3 - want, "{m:?}: {r}");
    }
}

#[test]
fn attributes() {
    for m in ALL {
        let want = if m.devmem() { 4 } else { 3 };
        expect("attributes", m, testkit::run_attributes(m.make()), want);
    }
}

#[test]
fn teardown() {
    for m in ALL {
        expect("teardown", m, testkit::run_teardown(m.make()), 2);
    }
}

#[test]
fn bad_input() {
    for m in ALL {
        expect("bad_input", m, testkit::run_bad_input(m.make()), 6);
    }
}

#[test]
fn run_all_adds_up() {
    let r = testkit::run_all(Machine::Linked.make());
    println!("all groups on two linked devices: {r}");
    assert!(r.ok(), "{r}");
    assert_eq!((r.passed, r.skipped), (27, 1), "{r}");
}

/// How [`Liar`] misreports.
#[derive(Clone, Copy, Debug)]
enum Lie {
    CpuRead,
    HidePtes,
    LeakDma,
    SelfCheck,
}

/// The simulator with one lie in its answers.
struct Liar(SimBackend, Lie);

impl Backend for Liar {
    type P = SimPlatform;
    fn devices(&self) -> usize {
        self.0.devices()
    }
    fn svm(&self, dev: usize) -> &Svm<SimPlatform> {
        self.0.svm(dev)
    }
    fn mmap(&mut self, len: u64, flags: VmaFlags) -> Result<u64> {
        self.0.mmap(len, flags)
    }
    fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.0.munmap(addr, len)
    }
    fn cpu_read(&mut self, addr: u64) -> Result<u64> {
        let v = self.0.cpu_read(addr)?;
        Ok(if matches!(self.1, Lie::CpuRead) {
            v ^ 1
        } else {
            v
        })
    }
    fn cpu_write(&mut self, addr: u64, val: u64) -> Result<()> {
        self.0.cpu_write(addr, val)
    }
    fn device_fault(&mut self, dev: usize, addr: u64, access: Access) -> Result<()> {
        self.0.device_fault(dev, addr, access)
    }
    fn device_read(&mut self, dev: usize, addr: u64) -> Result<u64> {
        self.0.device_read(dev, addr)
    }
    fn device_write(&mut self, dev: usize, addr: u64, val: u64) -> Result<()> {
        self.0.device_write(dev, addr, val)
    }
    fn device_pte(&self, dev: usize, addr: u64) -> Option<MappedPage> {
        match self.1 {
            Lie::HidePtes => None,
            _ => self.0.device_pte(dev, addr),
        }
    }
    fn mapped_pages(&self, dev: usize) -> u64 {
        self.0.mapped_pages(dev)
    }
    fn live_dma_mappings(&self, dev: usize) -> u64 {
        self.0.live_dma_mappings(dev) + u64::from(matches!(self.1, Lie::LeakDma))
    }
    fn device_pages_in_use(&self, dev: usize) -> Option<u64> {
        self.0.device_pages_in_use(dev)
    }
    fn self_check(&mut self) -> Result<()> {
        match self.1 {
            Lie::SelfCheck => Err(gpusvm::Error::Invalid),
            _ => self.0.self_check(),
        }
    }
}

#[test]
fn the_kit_catches_a_lying_backend() {
    for (lie, check) in [
        (Lie::CpuRead, "CPU read of a device write"),
        (Lie::HidePtes, "faulted address mapped"),
        (Lie::LeakDma, "backend set-up"),
        (Lie::SelfCheck, "backend invariants (self_check)"),
    ] {
        let r = testkit::run_fault(|| SimBackend::ram_only().map(|b| Liar(b, lie)));
        println!("{lie:?}: {r}");
        assert_eq!(r.passed + r.failed, 4, "{lie:?}: {r}");
        assert!(r.failed > 0, "{lie:?}: {r}");
        if !matches!(lie, Lie::LeakDma) {
            assert_eq!(
                r.first_failure.map(|f| f.check),
                Some(check),
                "{lie:?}: {r}"
            );
        }
    }
    // A leaked DMA mapping shows after close.
    let r = testkit::run_teardown(|| SimBackend::ram_only().map(|b| Liar(b, Lie::LeakDma)));
    println!("LeakDma: {r}");
    let f = r.first_failure.expect("a failure");
    assert_eq!(
        (f.check, f.expected, f.found),
        ("no DMA mapping after close", 0, 1)
    );
}
