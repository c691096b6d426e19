//! The whole-machine state-machine harness (`gpusvm::sim::harness::state_machine`) on the stable
//! toolchain — the same `run` the cargo-fuzz target `fuzz/fuzz_targets/state_machine.rs` calls:
//!
//! - `many_seeds`: 300 seeds × 60 operations, each sequence decoded with `arbitrary` from a
//!   seeded byte stream; the summed [`Summary`] must show that the interesting paths were
//!   reached (migrations both ways, evictions, GC of device ranges, failed migrations, injected
//!   failures firing, atomics, model-predicted errors);
//! - `ops_from_bytes`: proptest over random byte inputs decoded exactly as libFuzzer's
//!   `fuzz_target!(|input: Input| ..)` decodes them;
//! - `replay`: the committed corpus `fuzz/corpus/state_machine/` (hand-made `seed-*` inputs
//!   and what the fuzzer kept) and any crash in `fuzz/artifacts/state_machine/`: all of it with
//!   `--release`, the seeds and a fixed sample of the rest in debug builds (`cargo test`, CI);
//!   `GPUSVM_REPLAY=path cargo test --features sim --test sim_state_machine replay` replays
//!   one fuzz crash file instead (and the ignored `minimize` shrinks it);
//! - hand-written scenarios (and regressions found by fuzzing).
#![cfg(feature = "sim")]

use arbitrary::{Arbitrary, Unstructured};
use gpusvm::sim::harness::state_machine::{
    run, run_summary, Input, Loc, Op, Premap, Prot, Setup, Span, Summary, Timeslice, VramSize,
    ATOMICS_ON_SYSMEM,
};
use gpusvm::sim::Rng;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Decode bytes the way `libfuzzer_sys::fuzz_target!(|input: Input| ..)` does.
fn decode(bytes: &[u8]) -> Option<Input> {
    Input::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

fn run_input(input: &Input) -> Result<Summary, String> {
    run_summary(input.setup.clone(), &input.ops)
}

fn add(total: &mut Summary, s: &Summary) {
    total.steps += s.steps;
    total.expected_errors += s.expected_errors;
    total.injected_errors += s.injected_errors;
    total.injections_fired += s.injections_fired;
    total.atomics_ok += s.atomics_ok;
    total.atomics_refused += s.atomics_refused;
    total.straddles_rebuilt += s.straddles_rebuilt;
    total.migrations_refused += s.migrations_refused;
    total.migrations_to_devmem += s.migrations_to_devmem;
    total.migrations_to_ram += s.migrations_to_ram;
    total.evictions += s.evictions;
    total.migrate_failures += s.migrate_failures;
    total.gc_ranges += s.gc_ranges;
    total.attrs_set += s.attrs_set;
    total.attrs_refused += s.attrs_refused;
    total.atomics_forbidden += s.atomics_forbidden;
    total.prefetches_ok += s.prefetches_ok;
    total.prefetches_failed += s.prefetches_failed;
}

/// Re-encode raw bytes as an input of the `state_machine` fuzz target: the [`Setup`] decoded
/// from the front, then up to `max_ops` ops decoded one after the other, each prefixed with the
/// continuation byte that `Vec::arbitrary_take_rest` reads before every element (random bytes
/// would stop the sequence after two ops on average).
fn fuzz_format(raw: &[u8], max_ops: usize) -> Vec<u8> {
    let mut u = Unstructured::new(raw);
    let _ = Setup::arbitrary(&mut u);
    let mut out = raw[..raw.len() - u.len()].to_vec();
    let mut n = 0;
    while !u.is_empty() && n < max_ops {
        let start = raw.len() - u.len();
        if Op::arbitrary(&mut u).is_err() {
            break;
        }
        out.push(1);
        out.extend_from_slice(&raw[start..raw.len() - u.len()]);
        n += 1;
    }
    out.push(0);
    out
}

/// Random bytes from `seed`.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// A sequence of `n` ops and a setup from a seeded byte stream.
fn seeded(seed: u64, n: usize) -> (Setup, Vec<Op>) {
    let bytes = random_bytes(seed, 64 + n * 24);
    let mut u = Unstructured::new(&bytes);
    let setup = Setup::arbitrary(&mut u).unwrap_or_default();
    let ops = (0..n)
        .map_while(|_| Op::arbitrary(&mut u).ok())
        .collect::<Vec<_>>();
    (setup, ops)
}

#[test]
fn many_seeds() {
    let mut total = Summary::default();
    for seed in 0..300u64 {
        let (setup, ops) = seeded(seed, 60);
        match run_summary(setup.clone(), &ops) {
            Ok(s) => add(&mut total, &s),
            Err(e) => panic!("seed {seed}: {e}\nsetup: {setup:?}\nops: {ops:#?}"),
        }
    }
    println!("{total:#?}");
    assert!(total.steps >= 300 * 50, "{total:?}");
    assert!(total.migrations_to_devmem > 100, "{total:?}");
    assert!(total.migrations_to_ram > 50, "{total:?}");
    assert!(total.evictions > 10, "{total:?}");
    assert!(total.migrate_failures > 10, "{total:?}");
    assert!(total.gc_ranges > 10, "{total:?}");
    assert!(total.injections_fired > 50, "{total:?}");
    assert!(total.atomics_ok > 50, "{total:?}");
    assert!(total.expected_errors > 100, "{total:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ops_from_bytes(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let bytes = fuzz_format(&raw, 120);
        if let Some(input) = decode(&bytes) {
            if let Err(e) = run_input(&input) {
                prop_assert!(false, "{e}\ninput: {input:?}");
            }
        }
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/state_machine")
}

/// Regenerate the seed part of the corpus (`seed-*` files):
/// `cargo test --features sim --test sim_state_machine write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/state_machine/seed-*"]
fn write_seed_corpus() {
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for seed in 0..32u64 {
        let n = [10, 20, 40, 80][seed as usize % 4];
        let bytes = fuzz_format(&random_bytes(0x5eed_0000 + seed, 64 + n * 24), n);
        std::fs::write(corpus_dir().join(format!("seed-{seed:02}")), bytes).unwrap();
    }
}

#[test]
fn fuzz_format_decodes_to_the_same_ops() {
    let raw = random_bytes(7, 2000);
    let input = decode(&fuzz_format(&raw, 50)).unwrap();
    let mut u = Unstructured::new(&raw);
    let _ = Setup::arbitrary(&mut u).unwrap();
    let direct: Vec<Op> = (0..50).map(|_| Op::arbitrary(&mut u).unwrap()).collect();
    assert_eq!(format!("{:?}", input.ops), format!("{direct:?}"));
}

/// Fuzzer-kept inputs (not `seed-*`) a debug build replays: every `DEBUG_STRIDE`-th, sorted by
/// name. On a shared 2-core machine the whole corpus (906 files) took about 110 s in a debug
/// build; the `seed-*` inputs plus every 3rd of the rest (324 files) about 43 s.
const DEBUG_STRIDE: usize = 3;

/// Replays the committed corpus `fuzz/corpus/state_machine/` and every crash libFuzzer left in
/// `fuzz/artifacts/state_machine/`: all of them in release builds (`cargo test --release`); in
/// debug builds all `seed-*` inputs and artifacts and a fixed sample (every [`DEBUG_STRIDE`]-th
/// by name) of the fuzzer-kept inputs. `GPUSVM_REPLAY=<file>` replays only that file.
#[test]
fn replay() {
    if let Ok(path) = std::env::var("GPUSVM_REPLAY") {
        let bytes = std::fs::read(&path).unwrap();
        let input = decode(&bytes).expect("decodes");
        println!("{input:#?}");
        if let Err(e) = run_input(&input) {
            panic!("{e}");
        }
        return;
    }
    let list = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let corpus = list(&corpus_dir());
    let artifacts =
        list(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/artifacts/state_machine"));
    assert!(
        corpus.len() >= 32,
        "corpus {} is missing",
        corpus_dir().display()
    );
    let (in_corpus, mut fuzzer_kept, mut files) = (corpus.len(), 0, Vec::new());
    for path in corpus {
        let seed = path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("seed-"));
        if !seed {
            fuzzer_kept += 1;
            if cfg!(debug_assertions) && (fuzzer_kept - 1) % DEBUG_STRIDE != 0 {
                continue;
            }
        }
        files.push(path);
    }
    files.extend(artifacts);
    let (mut decoded, mut total) = (0, Summary::default());
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        if let Some(input) = decode(&bytes) {
            decoded += 1;
            match run_input(&input) {
                Ok(s) => add(&mut total, &s),
                Err(e) => panic!("{}: {e}\ninput: {input:?}", path.display()),
            }
        }
    }
    println!(
        "{} files replayed ({in_corpus} in the corpus), {decoded} decode: {total:#?}",
        files.len()
    );
    assert!(
        decoded * 10 >= files.len() * 9,
        "{decoded} of {} decode",
        files.len()
    );
    assert!(
        total.steps > 10 * decoded,
        "the corpus decodes to real op sequences: {total:?}"
    );
    assert!(
        total.migrations_to_devmem > 0 && total.migrations_to_ram > 0,
        "{total:?}"
    );
}

/// Shrink a failing input: `GPUSVM_REPLAY=path cargo test --features sim --test
/// sim_state_machine minimize -- --ignored --nocapture` drops ops one at a time while the run
/// still fails with the same message (ignoring the step number) and prints what is left.
#[test]
#[ignore = "needs GPUSVM_REPLAY"]
fn minimize() {
    let path = std::env::var("GPUSVM_REPLAY").expect("GPUSVM_REPLAY=path");
    let input = decode(&std::fs::read(&path).unwrap()).expect("decodes");
    let tail = |e: &str| {
        e.split_once(": ")
            .map_or(e.to_string(), |(_, t)| t.to_string())
    };
    let want = tail(&run_input(&input).expect_err("the input must fail"));
    let setup = input.setup.clone();
    let fails = |ops: &[Op]| run(setup.clone(), ops).is_err_and(|e| tail(&e) == want);
    let mut ops = input.ops.clone();
    let mut i = 0;
    while i < ops.len() {
        let mut t = ops.clone();
        t.remove(i);
        if fails(&t) {
            ops = t;
        } else {
            i += 1;
        }
    }
    println!("setup: {setup:?}\nops: {ops:#?}\nerror: {want}");
}

const fn loc(slot: u8, block: u8, word: u8) -> Loc {
    Loc { slot, block, word }
}

#[test]
fn doc_example_and_default_setup() {
    let l = loc(0, 3, 1);
    let ops = [
        Op::CpuWrite { loc: l, value: 7 },
        Op::DevRead { dev: 0, loc: l },
        Op::DevWrite {
            dev: 1,
            loc: l,
            value: 9,
        },
        Op::CpuRead { loc: l },
    ];
    let s = run_summary(Setup::default(), &ops).unwrap();
    assert!(s.migrations_to_devmem >= 2, "{s:?}");
}

#[test]
fn scenario_everything_once() {
    let setups = [
        Setup::default(),
        Setup {
            linked: true,
            ..Setup::default()
        },
        Setup {
            vram: [
                VramSize::Small,
                VramSize::Tiny,
                VramSize::None,
                VramSize::None,
            ],
            premap: [
                Premap::Huge,
                Premap::ReadWrite,
                Premap::ReadOnly,
                Premap::None,
            ],
            timeslice: Timeslice::Short,
            can_migrate_same_pagemap: true,
            source_peer_migrates: true,
            ..Setup::default()
        },
        Setup {
            devices: 0,
            vram: [VramSize::Medium; 4],
            ..Setup::default()
        },
    ];
    let a = loc(0, 0, 0);
    let b = loc(1, 5, 2);
    let c = loc(3, 31, 3);
    let ops = vec![
        Op::CpuWrite { loc: a, value: 1 },
        Op::CpuWrite { loc: b, value: 2 },
        Op::DevRead { dev: 0, loc: a },
        Op::DevWrite {
            dev: 1,
            loc: b,
            value: 3,
        },
        Op::DevAtomic {
            dev: 0,
            loc: a,
            add: 4,
        },
        Op::CpuRead { loc: a },
        Op::Munmap {
            span: Span::Blocks {
                slot: 0,
                first: 16,
                len: 3,
            },
        },
        Op::GcRun { dev: 0 },
        Op::DevRead { dev: 0, loc: a },
        Op::InjectCopyFail {
            dev: 1,
            nth: 0,
            after_runs: 1,
        },
        Op::DevRead { dev: 1, loc: c },
        Op::InjectDmaFail { dev: 0, nth: 1 },
        Op::DevWrite {
            dev: 0,
            loc: c,
            value: 5,
        },
        Op::InjectAllocFail { dev: 0, nth: 0 },
        Op::DevAtomic {
            dev: 0,
            loc: b,
            add: 0,
        },
        Op::Mprotect {
            span: Span::Slot { slot: 1 },
            prot: Prot::ReadOnly,
        },
        Op::DevWrite {
            dev: 0,
            loc: b,
            value: 6,
        },
        Op::Fork,
        Op::DevWrite {
            dev: 1,
            loc: a,
            value: 7,
        },
        Op::Migrate { dev: 1, loc: a },
        Op::Evict { dev: 1, loc: a },
        Op::ChildExit,
        Op::MadviseDontneed {
            span: Span::Slot { slot: 3 },
        },
        Op::Mmap {
            span: Span::Blocks {
                slot: 0,
                first: 16,
                len: 3,
            },
            prot: Prot::ReadWrite,
            huge: false,
        },
        Op::Advance { ms: 9 },
        Op::CpuSweep,
    ];
    // What every setup must have gone through (the ops above, in order): all steps run; both
    // device atomics completed; a device migrated pages into its memory (the first device read
    // and write) and the munmapped part of slot 0 was garbage-collected; at least two of the
    // three injected failures (copy, DMA map, allocation) fired and a migration failed because
    // of them; the write through the read-only mapping of slot 1 failed as the model predicted.
    for (i, setup) in setups.into_iter().enumerate() {
        let s = match run_summary(setup.clone(), &ops) {
            Ok(s) => s,
            Err(e) => panic!("{e}\nsetup: {setup:?}"),
        };
        println!("{setup:?}\n{s:?}");
        let what = format!("setup {i}: {s:?}");
        assert_eq!(s.steps, ops.len(), "{what}");
        assert_eq!(s.atomics_ok, 2, "{what}");
        assert_eq!(s.atomics_refused + s.atomics_forbidden, 0, "{what}");
        assert!(s.migrations_to_devmem >= 3, "{what}");
        assert!(s.gc_ranges >= 1, "{what}");
        assert!(s.injections_fired >= 2, "{what}");
        assert!(s.migrate_failures >= 1, "{what}");
        assert!(s.expected_errors >= 1, "{what}");
        match i {
            // Two devices: the explicit migration and eviction of `a` by device 1 take pages
            // back to RAM.
            0 | 1 => assert!(s.migrations_to_ram >= 1 && s.evictions >= 1, "{what}"),
            // Little device memory, slot 2 read-only and slot 3 unmapped: more model-predicted
            // errors (the accesses to `c`), and an injected failure surfaced as an error.
            2 => {
                assert!(s.migrations_to_ram >= 1 && s.evictions >= 1, "{what}");
                assert!(s.expected_errors >= 2, "{what}");
                assert!(s.injected_errors >= 1, "{what}");
            }
            // One device (`dev: 1` is device 0): the explicit migration after the fork is
            // refused.
            _ => assert!(s.migrations_refused >= 1, "{what}"),
        }
    }
}

/// Regression (CI's `ops_from_bytes`): a device read binds a page of a slot whose atomic policy
/// is `cpu`; a device atomic through that mapping must still be refused with `Access`. With
/// the `device` policy on a device that does atomics on system memory, the same atomic
/// completes in place (no device memory at all).
#[test]
fn atomic_through_a_read_mapping_follows_the_policy() {
    for (policy, links, forbidden, ok) in [(3u8, 0u8, 1usize, 0usize), (1, ATOMICS_ON_SYSMEM, 0, 1)]
    {
        let setup = Setup {
            vram: [VramSize::None; 4],
            premap: [Premap::None, Premap::ReadWrite, Premap::None, Premap::None],
            timeslice: Timeslice::Zero,
            links,
            ..Setup::default()
        };
        let ops = [
            Op::SetAttrs {
                dev: 0,
                span: Span::Slot { slot: 1 },
                preferred: 0,
                atomic: policy,
                system_pages_only: false,
            },
            Op::DevRead {
                dev: 0,
                loc: loc(1, 0, 0),
            },
            Op::DevAtomic {
                dev: 0,
                loc: loc(1, 0, 0),
                add: 0,
            },
        ];
        let s = run_summary(setup, &ops).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.atomics_forbidden, s.atomics_ok),
            (forbidden, ok),
            "{s:?}"
        );
    }
}
