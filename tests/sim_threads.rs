//! Two threads: one faults device reads over many ranges while the other munmaps, mmaps and
//! writes regions. The simulator's invariant checker and a data model check run at every
//! quiescent point (after each round, when both threads have joined); every successful device
//! read must return a value the CPU wrote at that address (or 0 for fresh memory).
#![cfg(feature = "sim")]

use gpusvm::platform::{VmaFlags, PAGE_SIZE};
use gpusvm::sim::{check_invariants, Rng, SimGpu, SimMm, SimWorld};
use gpusvm::Error;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const SLOTS: u64 = 12;
const SLOT_LEN: u64 = 256 << 10;
const BASE: u64 = 0x2_0000_0000;
const MAGIC: u64 = 0x5A5A_0000_0000_0000;

fn slot_addr(i: u64) -> u64 {
    BASE + i * (1 << 20)
}

/// The value the writer stores at `addr` in generation `gen` (> 0).
fn tag(addr: u64, gen: u64) -> u64 {
    (gen << 48) ^ addr ^ MAGIC
}

/// The generation encoded in `v` if it is a tag for `addr`.
fn gen_of(addr: u64, v: u64) -> Option<u64> {
    let x = v ^ addr ^ MAGIC;
    (x & ((1 << 48) - 1) == 0).then_some(x >> 48)
}

/// What the writer knows about a slot: its mapped pages and protection.
#[derive(Default)]
struct Slot {
    mapped: std::collections::BTreeSet<u64>,
    ro: bool,
}

fn run(seed: u64, rounds: u32) {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
    // Highest generation ever written per slot (the reader checks against it).
    let max_gen: Vec<AtomicU64> = (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
    let mut slots: Vec<Slot> = (0..SLOTS).map(|_| Slot::default()).collect();
    // The CPU-side model: address -> last value written (only for mapped slots).
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut gen = 0u64;
    let (mut ok_reads, mut failed_reads) = (0u64, 0u64);
    let mut wrng = Rng::new(seed);

    for round in 0..rounds {
        let (ok, failed) = std::thread::scope(|sc| {
            let reader = sc.spawn(|| {
                let mut rng = Rng::new(seed ^ 0xABCD ^ u64::from(round));
                let (mut ok, mut failed) = (0u64, 0u64);
                for _ in 0..200 {
                    let slot = rng.below(SLOTS);
                    let off = rng.below(SLOT_LEN / PAGE_SIZE) * PAGE_SIZE + 8 * rng.below(4);
                    let a = slot_addr(slot) + off;
                    match gpu.read_u64(a) {
                        Ok(0) => ok += 1,
                        Ok(v) => {
                            let g = gen_of(a, v).unwrap_or_else(|| {
                                panic!("device read {v:#x} at {a:#x}: never written there")
                            });
                            let max = max_gen[slot as usize].load(Ordering::SeqCst);
                            assert!(
                                g >= 1 && g <= max,
                                "device read generation {g} at {a:#x}, max written {max}"
                            );
                            ok += 1;
                        }
                        Err(Error::Fault | Error::Again | Error::Busy) => failed += 1,
                        Err(e) => panic!("device read at {a:#x}: unexpected {e:?}"),
                    }
                }
                (ok, failed)
            });
            // The writer: mmaps, writes, munmaps (whole or part), MADV_DONTNEEDs and
            // mprotects slots.
            for _ in 0..24 {
                let slot = wrng.below(SLOTS);
                let s = slot_addr(slot);
                let i = slot as usize;
                let pages = SLOT_LEN / PAGE_SIZE;
                if slots[i].mapped.is_empty() {
                    mm.mmap_fixed(s, SLOT_LEN, RW, false).unwrap();
                    slots[i] = Slot {
                        mapped: (0..pages).collect(),
                        ro: false,
                    };
                    continue;
                }
                match wrng.below(8) {
                    0 | 1 => {
                        // munmap of a random part (or all) of the slot.
                        let p = wrng.below(pages);
                        let n = 1 + wrng.below(pages - p);
                        let (a, len) = (s + p * PAGE_SIZE, n * PAGE_SIZE);
                        mm.munmap(a, len).unwrap();
                        model.retain(|k, _| !(a..a + len).contains(k));
                        slots[i].mapped.retain(|q| !(p..p + n).contains(q));
                        if slots[i].mapped.len() < (pages / 2) as usize {
                            mm.munmap(s, SLOT_LEN).unwrap();
                            model.retain(|k, _| !(s..s + SLOT_LEN).contains(k));
                            slots[i].mapped.clear();
                        }
                    }
                    2 => {
                        let p = wrng.below(pages);
                        let n = 1 + wrng.below((pages - p).min(16));
                        let (a, len) = (s + p * PAGE_SIZE, n * PAGE_SIZE);
                        mm.madvise_dontneed(a, len).unwrap();
                        model.retain(|k, _| !(a..a + len).contains(k));
                    }
                    3 if slots[i].mapped.len() == pages as usize => {
                        let ro = !slots[i].ro;
                        let flags = if ro { VmaFlags::READ } else { RW };
                        mm.mprotect(s, SLOT_LEN, flags).unwrap();
                        slots[i].ro = ro;
                    }
                    _ if !slots[i].ro => {
                        gen += 1;
                        max_gen[i].fetch_max(gen, Ordering::SeqCst);
                        let mapped: Vec<u64> = slots[i].mapped.iter().copied().collect();
                        for k in 0..8 {
                            let p = mapped[wrng.below(mapped.len() as u64) as usize];
                            let a = s + p * PAGE_SIZE + 8 * (k % 4);
                            let v = tag(a, gen);
                            mm.write_u64(a, v).unwrap();
                            model.insert(a, v);
                        }
                    }
                    _ => {}
                }
            }
            reader.join().unwrap()
        });
        ok_reads += ok;
        failed_reads += failed;
        // Quiescent point: invariants and data.
        check_invariants(&mm, &[&gpu])
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", gpu.describe()));
        for (&a, &v) in &model {
            assert_eq!(mm.read_u64(a), Ok(v), "round {round}: CPU at {a:#x}");
        }
        // The device agrees wherever it still has a mapping (reads without faulting).
        for (&a, &v) in model.iter().step_by(7) {
            assert_eq!(gpu.read_u64(a), Ok(v), "round {round}: device at {a:#x}");
        }
        check_invariants(&mm, &[&gpu])
            .unwrap_or_else(|e| panic!("round {round} (after reads): {e}\n{}", gpu.describe()));
    }
    assert!(
        ok_reads > 0 && failed_reads > 0,
        "ok {ok_reads} failed {failed_reads}"
    );
    let st = gpu.svm.stats();
    assert!(st.gc_ranges > 0, "{st:?}");
    gpu.svm.close();
    gpusvm::sim::check_closed(&gpu).unwrap();
}

#[test]
fn device_reads_race_munmap_and_mmap() {
    for seed in 1..=4 {
        run(seed, 30);
    }
}
