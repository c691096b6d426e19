//! The conformance kit (`gpusvm::testkit`) against the simulator: every scenario group on
//! several machine configurations (one device in system memory only, with device memory, with
//! huge pages, two linked devices, two unlinked devices). Each report must have no failure,
//! the expected number of passes, and no skip where the configuration has the capability.
//!
//! These are the simulator's contract scenarios (they used to be the tests of
//! `sim_smoke.rs`, `sim_devmem_smoke.rs`, `sim_multi_smoke.rs`, `sim_close.rs` and part of
//! `sim_fault_path.rs`); the simulator's invariant checker runs after every step
//! (`SimBackend::self_check`).
#![cfg(feature = "sim")]

use gpusvm::testkit::sim::SimBackend;
use gpusvm::testkit::{self, Report};
use gpusvm::{Result, SvmConfig};

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
