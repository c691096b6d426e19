//! Racing threads (std::thread::scope): device faults against munmap/mmap, mprotect and CPU
//! writes of the same pages, and two devices against each other. While threads run, each one
//! checks what it reads against what it can know (its own last write, or the set of values ever
//! written); once they stop, the full checker runs and the data model — rebuilt from what each
//! thread last wrote — is compared with memory and read back by the CPU and the device.

use crate::harness::*;
use gpusvm::policy::PrefetchLoc;
use gpusvm::sim::Rng;
use gpusvm::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Retry an access that lost a race (`Again`/`Busy`) a bounded number of times.
fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    for _ in 0..500 {
        match f() {
            Err(Error::Again | Error::Busy) => std::thread::yield_now(),
            r => return r,
        }
    }
    f()
}

/// The generation encoded in `v` if it is a tag for `addr`.
fn gen_of(addr: u64, v: u64) -> Option<u64> {
    let x = v ^ tag(addr, 0);
    (x & ((1 << 48) - 1) == 0).then_some(x >> 48)
}

/// xe_exec_system_allocator `free-race` / `malloc-race`: one thread keeps the device reading
/// and writing while another frees and re-maps memory next to (and under) it. The device's own
/// buffer never loses a write (every read-back is its last value); reads of the churning slots
/// return zero or a value the CPU really wrote there; after each round the checker and the
/// model agree, and the garbage collector has removed the freed ranges.
#[test]
fn race_device_faults_vs_munmap() {
    const SLOTS: u64 = 4;
    const SLOT: u64 = 256 << 10;
    let mut m = Machine::new(&[]);
    m.join(0, 2048);
    let own = m.mmap(M2);
    let base = m.mmap(SLOTS * M);
    m.munmap(base, SLOTS * M);
    let slot = |i: u64| base + i * M;
    for i in 0..SLOTS {
        m.mmap_fixed(slot(i), SLOT, RW);
    }
    let max_gen: Vec<AtomicU64> = (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
    let (mut churn_ok, mut churn_failed) = (0u64, 0u64);
    let mut gen = 0u64;
    for round in 0..4u64 {
        let g = m.g(0).clone();
        let mm = m.mm().clone();
        let (own_vals, ok, failed, slot_vals) = std::thread::scope(|sc| {
            let dev = sc.spawn(|| {
                let mut rng = Rng::new(round + 1);
                let mut own_vals = Vec::new();
                let (mut ok, mut failed) = (0u64, 0u64);
                for k in 0..150u64 {
                    let a = own + rng.below(M2 / P) * P + 8 * (k % 4);
                    let v = tag(a, 1000 + round * 1000 + k);
                    retry(|| g.write_u64(a, v)).expect("device write of its own buffer");
                    let back = retry(|| g.read_u64(a)).expect("device read of its own buffer");
                    assert_eq!(back, v, "device lost its own write at {a:#x}");
                    own_vals.push((a, v));
                    let s = rng.below(SLOTS);
                    let b = slot(s) + rng.below(SLOT / P) * P;
                    match g.read_u64(b) {
                        Ok(0) => ok += 1,
                        Ok(v) => {
                            let gn = gen_of(b, v).unwrap_or_else(|| {
                                panic!("device read {v:#x} at {b:#x}: never written there")
                            });
                            let max = max_gen[s as usize].load(Ordering::SeqCst);
                            assert!(gn >= 1 && gn <= max, "generation {gn} > {max} at {b:#x}");
                            ok += 1;
                        }
                        Err(Error::Fault | Error::Again | Error::Busy) => failed += 1,
                        Err(e) => panic!("device read at {b:#x}: {e:?}"),
                    }
                }
                (own_vals, ok, failed)
            });
            // The CPU: free and re-map slots, and write into them.
            let mut rng = Rng::new(100 + round);
            let mut slot_vals: Vec<Vec<(u64, u64)>> = vec![Vec::new(); SLOTS as usize];
            for _ in 0..30 {
                let s = rng.below(SLOTS);
                let i = s as usize;
                if rng.below(3) == 0 {
                    mm.munmap(slot(s), SLOT).unwrap();
                    mm.mmap_fixed(slot(s), SLOT, RW, false).unwrap();
                    slot_vals[i].clear();
                } else {
                    gen += 1;
                    max_gen[i].fetch_max(gen, Ordering::SeqCst);
                    for _ in 0..4 {
                        let a = slot(s) + rng.below(SLOT / P) * P;
                        mm.write_u64(a, tag(a, gen)).unwrap();
                        slot_vals[i].push((a, tag(a, gen)));
                    }
                }
            }
            let (own_vals, ok, failed) = dev.join().unwrap();
            (own_vals, ok, failed, slot_vals)
        });
        churn_ok += ok;
        churn_failed += failed;
        // Quiescent: rebuild the model from what each thread last wrote.
        let model = &mut m.procs[0].model;
        for s in 0..SLOTS {
            let keys: Vec<u64> = model.range(slot(s)..slot(s) + SLOT).map(|x| *x.0).collect();
            for k in keys {
                model.remove(&k);
            }
        }
        for (a, v) in own_vals.into_iter().chain(slot_vals.into_iter().flatten()) {
            model.insert(a, v);
        }
        m.check(&format!("round {round}"));
        m.cpu_verify(own, own + M2);
        m.dev_verify(0, base, base + SLOTS * M);
    }
    assert!(churn_ok > 0, "ok {churn_ok} failed {churn_failed}");
    let s = m.stats(0);
    assert!(s.gc_ranges > 0, "freed ranges were collected: {s:?}");
    assert!(s.migrations_to_devmem > 0);
    for (s, e) in m.ranges(0) {
        let in_slot = (0..SLOTS).any(|i| slot(i) <= s && e <= slot(i) + SLOT);
        assert!(
            in_slot || (own <= s && e <= own + M2),
            "stale range [{s:#x}, {e:#x})"
        );
    }
}

/// hmm-tests `anon_write_prot` under a race (xe_exec_system_allocator `mprotect` while the GPU
/// runs): one thread flips a buffer between read-only and read-write while the device keeps
/// writing it. A device write either lands or is refused with `Perm`; none lands while the
/// buffer was read-only for the whole write; every write that landed is in memory afterwards.
#[test]
fn race_device_writes_vs_mprotect() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let len = 8 * K64;
    let buf = m.mmap(len);
    m.cpu_fill(buf, buf + len, P, 1);
    // mprotect calls started and returned; the n-th call makes the buffer read-only if n is odd.
    let started = AtomicU64::new(0);
    let epoch = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let g = m.g(0).clone();
    let mm = m.mm().clone();
    let (last, ok, perm) = std::thread::scope(|sc| {
        let dev = sc.spawn(|| {
            // Stop the other thread however this one ends (a failed assertion included).
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _stop = Stop(&stop);
            let mut rng = Rng::new(7);
            let mut last = std::collections::BTreeMap::new();
            let (mut ok, mut perm) = (0u64, 0u64);
            let mut seen = 0u64;
            for k in 0..20_000u64 {
                if perm > 0 && ok >= 200 && k >= 400 {
                    break;
                }
                if k % 8 == 0 {
                    // Let the protection change between bursts of writes, whatever the
                    // scheduler does (bounded wait).
                    let t = std::time::Instant::now();
                    while epoch.load(Ordering::SeqCst) == seen
                        && t.elapsed() < std::time::Duration::from_millis(200)
                    {
                        std::thread::yield_now();
                    }
                    seen = epoch.load(Ordering::SeqCst);
                }
                let a = buf + rng.below(len / P) * P + 8;
                let v = tag(a, k + 2);
                let e1 = epoch.load(Ordering::SeqCst);
                let s1 = started.load(Ordering::SeqCst);
                let r = retry(|| g.write_u64(a, v));
                let s2 = started.load(Ordering::SeqCst);
                match r {
                    Ok(()) => {
                        assert!(
                            !(e1 == s1 && s1 == s2 && s1 % 2 == 1),
                            "device write at {a:#x} landed while read-only (mprotect {s1})"
                        );
                        last.insert(a, v);
                        ok += 1;
                    }
                    Err(Error::Perm) => perm += 1,
                    Err(e) => panic!("device write at {a:#x}: {e:?}"),
                }
            }
            (last, ok, perm)
        });
        let mut ro = false;
        while !stop.load(Ordering::SeqCst) {
            ro = !ro;
            started.fetch_add(1, Ordering::SeqCst);
            mm.mprotect(buf, len, if ro { RO } else { RW }).unwrap();
            epoch.fetch_add(1, Ordering::SeqCst);
            std::thread::yield_now();
        }
        if ro {
            started.fetch_add(1, Ordering::SeqCst);
            mm.mprotect(buf, len, RW).unwrap();
            epoch.fetch_add(1, Ordering::SeqCst);
        }
        dev.join().unwrap()
    });
    m.procs[0].model.extend(last);
    m.check("after the race");
    assert!(ok > 0 && perm > 0, "ok {ok} perm {perm}");
    m.cpu_verify(buf, buf + len);
    m.dev_fill(0, buf, buf + len, P, 99);
    assert_eq!(m.dev_pte(0, buf), Some(true));
    m.cpu_verify(buf, buf + len);
}

/// xe_exec_system_allocator `race` sections / hmm-tests `migrate_multiple` with a concurrent
/// CPU: the CPU and the device write disjoint words of the same pages at the same time, so the
/// pages bounce between device memory and RAM: during the race the device migrates pages into
/// its memory and the CPU's faults migrate them back (both counted before the final checks,
/// which would move everything to RAM anyway). Each side always reads back its own last value;
/// afterwards both sides' words are all in memory.
#[test]
fn race_cpu_and_device_on_same_pages() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let len = 4 * K64;
    let buf = m.mmap(len);
    m.cpu_fill(buf, buf + len, P, 1);
    let g = m.g(0).clone();
    let mm = m.mm().clone();
    let dev_wrote = AtomicBool::new(false);
    let (dev_vals, cpu_vals) = std::thread::scope(|sc| {
        let dev = sc.spawn(|| {
            let mut rng = Rng::new(11);
            let mut vals = Vec::new();
            for k in 0..200u64 {
                let a = buf + rng.below(len / P) * P + 8;
                let v = tag(a, 100 + k);
                retry(|| g.write_u64(a, v)).expect("device write");
                assert_eq!(retry(|| g.read_u64(a)), Ok(v), "device lost {a:#x}");
                vals.push((a, v));
                dev_wrote.store(true, Ordering::SeqCst);
            }
            vals
        });
        // The CPU starts once the device has a page in its memory, so that the CPU's writes
        // (which cover every range of the buffer) find device pages to migrate back.
        while !dev_wrote.load(Ordering::SeqCst) && !dev.is_finished() {
            std::thread::yield_now();
        }
        let mut rng = Rng::new(12);
        let mut vals = Vec::new();
        for k in 0..200u64 {
            let a = buf + rng.below(len / P) * P + 16;
            let v = tag(a, 500 + k);
            mm.write_u64(a, v).expect("CPU write");
            assert_eq!(mm.read_u64(a), Ok(v), "CPU lost {a:#x}");
            vals.push((a, v));
        }
        (dev.join().unwrap(), vals)
    });
    m.procs[0]
        .model
        .extend(dev_vals.into_iter().chain(cpu_vals));
    // Device faults count in the `Svm`'s stats; CPU faults migrating back to RAM go through
    // the pagemap (the `migrate_to_ram` callback) and count there.
    let s = m.stats(0);
    let (to_ram, bytes) = m.g(0).svm.pagemap().unwrap().cpu_fault_migrations();
    println!("{s:?}\nCPU-fault migrations to RAM: {to_ram} ({bytes} bytes)");
    assert!(
        s.migrations_to_devmem >= 1,
        "no page went to device memory: {s:?}"
    );
    assert!(
        to_ram >= 1 && bytes >= P as usize,
        "no page came back to RAM ({to_ram}, {bytes})"
    );
    m.check("after the race");
    m.dev_verify(0, buf, buf + len);
    m.cpu_verify(buf, buf + len);
    assert!(m.all_at(buf, buf + len, Loc::Ram));
}

/// xe_exec_system_allocator `threads-shared-vm` on two GPUs (multi-GPU racing on one
/// allocation): two devices, in two threads, write and read back disjoint words of one
/// buffer. Linked devices share the pages peer-to-peer; unlinked ones bounce them between their
/// memories through RAM. Neither loses a write.
#[test]
fn race_two_devices_same_buffer() {
    for linked in [true, false] {
        let links: &[(u32, u32)] = if linked { &[(0, 1)] } else { &[] };
        let mut m = Machine::new(links);
        m.join(0, 2048);
        m.join(1, 2048);
        let len = 4 * K64;
        let buf = m.mmap(len);
        m.cpu_fill(buf, buf + len, P, 1);
        let (g0, g1) = (m.g(0).clone(), m.g(1).clone());
        let run = |g: &gpusvm::sim::SimGpu, off: u64, seed: u64| {
            let mut rng = Rng::new(seed);
            let mut vals = Vec::new();
            for k in 0..120u64 {
                let a = buf + rng.below(len / P) * P + off;
                let v = tag(a, seed * 1000 + k);
                retry(|| g.write_u64(a, v)).expect("device write");
                assert_eq!(retry(|| g.read_u64(a)), Ok(v), "lost {a:#x}");
                vals.push((a, v));
            }
            vals
        };
        let (v0, v1) = std::thread::scope(|sc| {
            let t0 = sc.spawn(|| run(&g0, 8, 1));
            let t1 = sc.spawn(|| run(&g1, 16, 2));
            (t0.join().unwrap(), t1.join().unwrap())
        });
        m.procs[0].model.extend(v0.into_iter().chain(v1));
        m.check("after the race");
        m.dev_verify(0, buf, buf + len);
        m.dev_verify(1, buf, buf + len);
        let total: usize = [0, 1]
            .iter()
            .map(|&i| m.stats(i).migrations_to_devmem)
            .sum();
        assert!(total >= 1, "linked {linked}: {total}");
        // Quiescent: device 0 pulls everything into its memory; device 1 then maps it over the
        // link in place, or (unlinked) takes it out of device 0's memory.
        let pm0 = m.pagemap_id(0);
        m.prefetch(0, buf, len, PrefetchLoc::Pagemap(pm0)).unwrap();
        assert!(m.all_at(buf, buf + len, Loc::Dev(0)));
        let s1 = m.stats(1);
        m.dev_verify(1, buf, buf + len);
        if linked {
            // Owner memory counts as placed: device 1 copies nothing into its own memory. A
            // range of device 1 that covers pages of several of device 0's allocations (the
            // race can leave device 0 with small ranges) is "mixed" and is evicted to RAM
            // (SPEC §3); everything else is read in place over the link.
            let s2 = m.stats(1);
            assert_eq!(s2.migrations_to_devmem, s1.migrations_to_devmem);
            let locs: Vec<Loc> = (buf..buf + len)
                .step_by(P as usize)
                .map(|a| m.loc(a))
                .collect();
            assert!(locs.iter().all(|l| matches!(l, Loc::Dev(0) | Loc::Ram)));
            if locs.contains(&Loc::Ram) {
                assert!(
                    s2.evictions > s1.evictions,
                    "RAM only through a mixed eviction"
                );
            } else {
                assert!(!m.peer_maps(1).is_empty());
            }
        } else {
            assert!((buf..buf + len)
                .step_by(P as usize)
                .all(|a| m.loc(a) != Loc::Dev(0)));
            assert!(m.peer_maps(1).is_empty());
        }
        m.cpu_verify(buf, buf + len);
    }
}
