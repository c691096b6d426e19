//! A seeded random walk over up to four devices, and two devices and the CPU on three threads.

use crate::machine::*;
use gpusvm::migrate::MigrateDetails;
use gpusvm::platform::{OwnerId, PAGE_SHIFT};
use gpusvm::Error;
use std::collections::BTreeMap;

/// A seeded random walk over up to four devices with a random link topology: CPU and device
/// reads and writes, forced migrations, munmap/mmap, teardowns and re-joins, all checked after
/// every step (the harness). Device ids are reused after teardown (a fresh device with the old
/// id; its owner is always new).
#[test]
fn random_walk_four_devices() {
    use gpusvm::sim::Rng;
    for seed in 0..10u64 {
        let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5);
        let mut links = Vec::new();
        for a in 0..4u32 {
            for b in a + 1..4 {
                if rng.below(2) == 0 {
                    links.push((a, b));
                }
            }
        }
        let mut m = Machine::new(&links);
        let mut used_owners: Vec<OwnerId> = Vec::new();
        let join = |m: &mut Machine, rng: &mut Rng, id: u32, used: &mut Vec<OwnerId>| {
            let vram = [0, 512, VRAM][rng.below(3) as usize];
            let mut c = cfg(vram);
            c.source_peer_migrates = rng.below(2) == 0;
            c.can_migrate_same_pagemap = rng.below(2) == 0;
            if rng.below(3) == 0 {
                c = c.with_chunk_sizes(&[K64, P]).unwrap();
            }
            let g = m.join_with(id, vram, c);
            let o = g.svm.owner().unwrap();
            // Fresh owner unless it joined a live group.
            let live_before = m
                .gpus
                .iter()
                .filter(|(i, _)| **i != id)
                .any(|(_, h)| h.svm.owner() == Some(o));
            if !live_before {
                assert!(!used.contains(&o), "seed {seed}: dead owner {o:?} reused");
            }
            used.push(o);
        };
        for id in 0..4 {
            if rng.below(4) != 0 {
                join(&mut m, &mut rng, id, &mut used_owners);
            }
        }
        let mut bufs = vec![m.mmap(2 * M2), m.mmap(M2)];
        let mut gen = 1u64;
        let (mut max_peer, mut d2d) = (0usize, 0usize);
        let mut children = Vec::new();
        for _ in 0..300 {
            let b = bufs[rng.below(bufs.len() as u64) as usize];
            let len = if m
                .mm
                .vmas()
                .iter()
                .any(|v| v.start == b && v.end - v.start == 2 * M2)
            {
                2 * M2
            } else {
                M2
            };
            let addr = b + rng.below(len / 8) * 8;
            let live: Vec<u32> = m.gpus.keys().copied().collect();
            let pick = |rng: &mut Rng| live.get(rng.below(live.len() as u64) as usize).copied();
            gen += 1;
            match rng.below(40) {
                0..=7 => {
                    m.cpu_write(addr, tag(addr, gen));
                }
                8..=11 => {
                    m.cpu_read(addr);
                }
                12..=21 => {
                    if let Some(id) = pick(&mut rng) {
                        m.dev_read(id, addr);
                    }
                }
                22..=29 => {
                    if let Some(id) = pick(&mut rng) {
                        m.dev_write(id, addr, tag(addr, gen));
                    }
                }
                30..=32 => {
                    // Forced migration of the device's range into its memory.
                    if let Some(id) = pick(&mut rng) {
                        let g = m.g(id).clone();
                        if let (Some(r), Some(_)) = (g.svm.find(addr), g.svm.pagemap()) {
                            let (r_start, r_end) = (r.start(), r.end());
                            let d = MigrateDetails {
                                source_peer_migrates: rng.below(2) == 0,
                                can_migrate_same_pagemap: rng.below(2) == 0,
                                ..MigrateDetails::default()
                            };
                            let before = m.frames();
                            let r = g.svm.migrate_to_devmem(&r, &d);
                            m.check("forced migration");
                            match r {
                                Ok(rep) if rep.already_there => assert_eq!(m.frames(), before),
                                Ok(_) => {
                                    let from_peer = before.iter().filter(|f| {
                                        f.2.is_some_and(|p| p.0 != id)
                                            && (r_start..r_end).contains(&(f.0 << PAGE_SHIFT))
                                    });
                                    d2d += from_peer.count();
                                }
                                Err(Error::Busy) | Err(Error::NoMem) => {
                                    let keep: Vec<_> =
                                        before.iter().map(|f| (f.0, f.1, f.2)).collect();
                                    let now: Vec<_> =
                                        m.frames().iter().map(|f| (f.0, f.1, f.2)).collect();
                                    assert_eq!(now, keep, "seed {seed}: failed migration moved");
                                }
                                Err(e) => panic!("seed {seed}: forced migration: {e:?}"),
                            }
                        }
                    }
                }
                33 => {
                    // The dead device stays checked until a new one takes its id.
                    if let Some(id) = pick(&mut rng) {
                        m.teardown(id);
                    }
                }
                34..=35 => {
                    let free: Vec<u32> = (0..4).filter(|i| !m.gpus.contains_key(i)).collect();
                    if let Some(&id) = free.get(rng.below(free.len().max(1) as u64) as usize) {
                        m.dead.remove(&id);
                        join(&mut m, &mut rng, id, &mut used_owners);
                    }
                }
                36 => {
                    // Unmap a whole buffer and map a new one.
                    if bufs.len() > 1 {
                        let i = rng.below(bufs.len() as u64) as usize;
                        let b = bufs.remove(i);
                        let len =
                            m.mm.vmas()
                                .iter()
                                .find(|v| v.start == b)
                                .map(|v| v.end - v.start)
                                .unwrap();
                        m.mm.munmap(b, len).unwrap();
                        m.model.retain(|a, _| !(b..b + len).contains(a));
                        m.check("munmap");
                    }
                    bufs.push(m.mmap(M2));
                }
                37 => {
                    // fork: device pages come back to RAM, the rest becomes copy-on-write;
                    // keep the child for a while (its mappings pin the frames).
                    let child = m.mm.fork();
                    m.check("fork");
                    children.push(child);
                    if children.len() > 2 {
                        children.remove(0);
                    }
                }
                _ => {
                    // Let time pass (timeslices end).
                    m.world.advance(10_000_000);
                }
            }
            let peer: usize = m
                .gpus
                .values()
                .map(|g| g.dev.dma_mappings().iter().filter(|(_, d)| d.peer).count())
                .sum();
            max_peer = max_peer.max(peer);
        }
        eprintln!(
            "seed {seed}: links {links:?}, {} steps, {} live devices, {} owners, max {} peer \
             mappings, {d2d} pages forced device-to-device, {} joins, devmem pages now {}",
            m.steps,
            m.gpus.len(),
            m.world.owners.owners(),
            max_peer,
            used_owners.len(),
            m.mm.ptes().iter().filter(|(_, p)| p.dev.is_some()).count()
        );
        let all: Vec<u32> = m.gpus.keys().copied().collect();
        for id in all {
            m.teardown(id);
        }
        assert_eq!(m.world.owners.owners(), 0, "seed {seed}");
        for b in bufs {
            let end = b + M2;
            m.cpu_read_all(b, end);
        }
    }
}

/// What one thread of [`threaded_two_devices`] did: its writes `(address, value)`, accesses
/// done, accesses given up.
type ThreadLog = (Vec<(u64, u64)>, u64, u64);

/// Two devices and the CPU on three threads, hammering the same pages (each thread owns its
/// own 8-byte slots in every page, so each can check its own reads exactly): linked (P2P and
/// device → device) and unlinked (ping-pong through RAM). Between rounds, with all threads
/// joined, the full harness check runs with the model merged from the threads' writes.
fn threaded_two_devices(link: bool, seed: u64) {
    use gpusvm::sim::Rng;
    let links: &[(u32, u32)] = if link { &[(0, 1)] } else { &[] };
    let mut m = Machine::new(links);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let buf = m.mmap(2 * M2);
    let (mut ok, mut failed) = (0u64, 0u64);
    for round in 0..4u64 {
        let (a, b, mm) = (m.g(0).clone(), m.g(1).clone(), m.mm.clone());
        let results: Vec<ThreadLog> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..3u64)
                .map(|who| {
                    let (a, b, mm) = (a.clone(), b.clone(), mm.clone());
                    sc.spawn(move || {
                        let mut rng = Rng::new(seed ^ (round << 8) ^ who);
                        let mut mine: BTreeMap<u64, u64> = BTreeMap::new();
                        let (mut ok, mut failed) = (0u64, 0u64);
                        for i in 0..150u64 {
                            let page = rng.below(2 * M2 / P);
                            let addr = buf + page * P + 8 * who;
                            let write = rng.below(2) == 0;
                            let v = tag(addr, (round << 16) | i | 1);
                            let r = match (who, write) {
                                (0, true) => a.write_u64(addr, v).map(|_| v),
                                (0, false) => a.read_u64(addr),
                                (1, true) => b.write_u64(addr, v).map(|_| v),
                                (1, false) => b.read_u64(addr),
                                (_, true) => mm.write_u64(addr, v).map(|_| v),
                                (_, false) => mm.read_u64(addr),
                            };
                            match r {
                                Ok(got) if write => {
                                    mine.insert(addr, got);
                                    ok += 1;
                                }
                                Ok(got) => {
                                    let want = mine.get(&addr).copied();
                                    if let Some(w) = want {
                                        assert_eq!(got, w, "thread {who} read at {addr:#x}");
                                    }
                                    ok += 1;
                                }
                                Err(Error::Busy | Error::Again) => failed += 1,
                                Err(e) => panic!("thread {who} at {addr:#x}: {e:?}"),
                            }
                        }
                        (mine.into_iter().collect(), ok, failed)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (writes, o, f) in results {
            m.model.extend(writes);
            ok += o;
            failed += f;
        }
        m.check(&format!("round {round}"));
        // A few checked reads by each device (every read runs the full harness check).
        let sample: Vec<u64> = m.model.keys().copied().step_by(97).collect();
        for a in sample {
            m.dev_read(0, a);
            m.dev_read(1, a);
        }
    }
    eprintln!("link {link}: {ok} accesses ok, {failed} gave up (Busy/Again)");
    assert!(ok > failed);
    m.teardown(0);
    m.teardown(1);
    m.cpu_read_all(buf, buf + 2 * M2);
}

#[test]
fn threaded_linked_devices() {
    for seed in 0..2 {
        threaded_two_devices(true, seed);
    }
}

#[test]
fn threaded_unlinked_devices() {
    for seed in 0..2 {
        threaded_two_devices(false, seed);
    }
}
