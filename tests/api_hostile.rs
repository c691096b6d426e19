//! The public API with hostile arguments, on the stable toolchain: the harness of the cargo-fuzz
//! target `fuzz/fuzz_targets/api.rs` (`gpusvm::sim::harness::api::run`) over many seeded random
//! inputs, decoded with `arbitrary` exactly as libFuzzer's `fuzz_target!` decodes them, plus the
//! committed seed corpus `fuzz/corpus/api/` and any crash libFuzzer left in
//! `fuzz/artifacts/api/`.
//!
//! Replay one file: `GPUSVM_REPLAY=<file> cargo test --features sim --test api_hostile replay`.
#![cfg(feature = "sim")]

use arbitrary::{Arbitrary, Unstructured};
use gpusvm::sim::harness::api::{run, run_stats, ApiInput, ApiOp, Num, Setup};
use gpusvm::sim::Rng;
use std::path::{Path, PathBuf};

/// Decode bytes the way `libfuzzer_sys::fuzz_target!(|input: ApiInput| ..)` does.
fn decode(bytes: &[u8]) -> ApiInput {
    ApiInput::arbitrary_take_rest(Unstructured::new(bytes)).unwrap_or_default()
}

/// A machine and `ops` calls decoded from random bytes of `seed` (the calls one by one, so
/// that their number does not depend on the bytes).
fn input_for(seed: u64, ops: usize) -> ApiInput {
    // `Rng::new` ignores the lowest bit of its seed: shifted, every seed is a different input.
    let mut rng = Rng::new(seed << 1);
    let bytes: Vec<u8> = (0..ops * 48 + 256).map(|_| rng.next_u64() as u8).collect();
    let mut u = Unstructured::new(&bytes);
    let setup = Setup::arbitrary(&mut u).unwrap_or_default();
    let mut calls = Vec::with_capacity(ops);
    while calls.len() < ops {
        match ApiOp::arbitrary(&mut u) {
            Ok(op) => calls.push(op),
            Err(_) => break,
        }
    }
    ApiInput { setup, ops: calls }
}

fn check(input: &ApiInput) {
    if let Err(e) = run(input) {
        panic!("{e}\ninput: {input:?}");
    }
}

/// 500 seeds × about 50 calls (fewer under Miri).
#[test]
fn seeded_random_inputs() {
    let (seeds, ops) = if cfg!(miri) { (2, 12) } else { (500u64, 50) };
    let mut calls = 0usize;
    let mut total = [0usize; 6];
    for seed in 0..seeds {
        let input = input_for(seed, ops);
        calls += input.ops.len();
        match run_stats(&input) {
            Ok(stats) => {
                for s in stats {
                    let got = [
                        s.ranges_created,
                        s.pages_committed,
                        s.invalidations,
                        s.gc_ranges,
                        s.migrations_to_devmem,
                        s.migrations_to_ram,
                    ];
                    for (t, g) in total.iter_mut().zip(got) {
                        *t += g;
                    }
                }
            }
            Err(e) => panic!("seed {seed}: {e}\ninput: {input:?}"),
        }
    }
    eprintln!(
        "{calls} calls; ranges created, pages committed, invalidations, ranges collected, \
         migrations to devmem, to RAM: {total:?}"
    );
    if !cfg!(miri) {
        assert!(
            calls >= 20_000,
            "the inputs must decode to many calls: {calls}"
        );
        // Hostile inputs must still reach the deep paths, not only the argument checks.
        assert!(total.iter().all(|&t| t > 0), "{total:?}");
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/api")
}

/// Every committed seed (and every crash left in `fuzz/artifacts/api/`) runs cleanly.
#[test]
#[cfg_attr(miri, ignore = "file system access; covered by seeded_random_inputs")]
fn replay() {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("GPUSVM_REPLAY") {
        files.push(PathBuf::from(p));
    } else {
        let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/artifacts/api");
        for dir in [corpus_dir(), artifacts] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                files.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
        assert!(
            files.len() >= 8,
            "seed corpus {} is missing",
            corpus_dir().display()
        );
    }
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let input = decode(&bytes);
        if let Err(e) = run(&input) {
            panic!("{}: {e}\ninput: {input:?}", f.display());
        }
    }
}

/// Hand-written hostile calls: the extremes of every argument.
#[test]
fn extremes() {
    let edges = [
        0u64,
        1,
        0xfff,
        0x1000,
        1 << 47,
        1 << 63,
        u64::MAX - 0xfff,
        u64::MAX,
    ];
    let mut ops = Vec::new();
    for (i, &a) in edges.iter().enumerate() {
        let b = edges[(i + 3) % edges.len()];
        let (a, b) = (Num::Raw(a), Num::Raw(b));
        for dev in 0..2 {
            ops.push(ApiOp::FindOrInsert {
                dev,
                addr: a,
                window: Some((a, b)),
                ctx: gpusvm::sim::harness::api::CtxSpec {
                    read_only: false,
                    devmem_only: true,
                    allow_mixed: false,
                    owner: None,
                },
            });
            for access in 0..3 {
                ops.push(ApiOp::HandleFault {
                    dev,
                    addr: a,
                    access,
                    window: None,
                });
            }
            ops.push(ApiOp::SetAttrs {
                dev,
                start: a,
                len: b,
                update: gpusvm::sim::harness::api::UpdateSpec {
                    preferred: Some((2, gpusvm::sim::harness::api::Id::Raw(u32::MAX))),
                    migration: Some(true),
                    atomic: Some(3),
                },
            });
            ops.push(ApiOp::Prefetch {
                dev,
                start: a,
                len: b,
                loc: 1,
                id: gpusvm::sim::harness::api::Id::Device(dev),
            });
            ops.push(ApiOp::InvalidateBegin {
                dev,
                id: gpusvm::sim::harness::api::NotifierSpec::Raw(a),
                start: a,
                end: b,
                event: gpusvm::sim::harness::api::EventSpec::Unmap,
            });
            ops.push(ApiOp::InvalidateEnd {
                dev,
                id: gpusvm::sim::harness::api::NotifierSpec::Raw(a),
                start: b,
                end: a,
            });
        }
        ops.push(ApiOp::RangeNew { start: a, end: b });
        ops.push(ApiOp::PageEntryNew {
            addr: a,
            order: (i as u8).wrapping_mul(37),
            dir: i as u8,
            proto: i as u8,
        });
        ops.push(ApiOp::FromErrno(i32::MIN + i as i32));
        ops.push(ApiOp::FromErrno(-(i as i32) * 11));
    }
    let mut setup = Setup {
        two_devices: true,
        link: true,
        ..Setup::default()
    };
    setup.devices[0].vram = 3;
    setup.devices[1].vram = 1;
    check(&ApiInput { setup, ops });
}

/// Found by the fuzz target: `evict` and `place_in` of a range that is not in the instance
/// (here: never inserted, 2^62 bytes) snapshotted its pages — an allocation proportional to its
/// size (libFuzzer: allocation-size-too-big) — and `evict` migrated whatever lay in its
/// interval. Both now refuse it first.
#[test]
fn foreign_ranges_are_refused_before_their_pages_are_looked_at() {
    use gpusvm::migrate::MigrateDetails;
    use gpusvm::policy::DeviceTarget;
    use gpusvm::range::Range;
    use gpusvm::sim::{SimGpu, SimMm, SimWorld};
    use gpusvm::Error;
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_devmem(&mm, 0, 512, 0).unwrap();
    for (s, e) in [(0, 1u64 << 62), (0x1000, 0x2000), (0, !0xfff)] {
        let r = Range::with_host(s, e).unwrap();
        assert_eq!(gpu.svm.evict(&r), Err(Error::Invalid));
        assert_eq!(
            gpu.svm.place_in(&r, DeviceTarget::Local, 0),
            Err(Error::Invalid)
        );
        assert_eq!(
            gpu.svm
                .migrate_to_devmem(&r, &MigrateDetails::default())
                .map(|_| ()),
            Err(Error::Invalid)
        );
    }
    gpu.check().unwrap();
}

/// `DevmemAlloc::new` refuses duplicate frames, also a duplicate of `u64::MAX` right after a run
/// that ends at the top of the frame space (found while adding `DevmemAlloc` to the API harness:
/// the overlap check saturated at `u64::MAX` and accepted it, and the page then could never be
/// freed, so the allocation was never released).
#[test]
fn devmem_alloc_refuses_duplicates_at_the_top() {
    use gpusvm::heap::AllocCtx;
    use gpusvm::pagemap::{DevmemAlloc, PutPage};
    use gpusvm::platform::PagemapId;
    use gpusvm::sim::SimHost;
    use gpusvm::Error;
    use gpusvm::HostVec;
    let frames = |f: Vec<u64>| {
        let mut v = HostVec::<SimHost, u64>::new();
        v.extend_from_slice(&f, AllocCtx::MaySleep).unwrap();
        v
    };
    let new =
        |f: Vec<u64>| DevmemAlloc::<SimHost>::new(PagemapId(0), 0, 0x10000, frames(f)).map(|_| ());
    assert_eq!(
        new(vec![u64::MAX - 1, u64::MAX, u64::MAX]),
        Err(Error::Invalid)
    );
    assert_eq!(
        new(vec![u64::MAX, u64::MAX - 1, u64::MAX]),
        Err(Error::Invalid)
    );
    assert_eq!(new(vec![u64::MAX, u64::MAX]), Err(Error::Invalid));
    let a = DevmemAlloc::<SimHost>::new(
        PagemapId(0),
        0,
        0x3000,
        frames(vec![u64::MAX - 1, u64::MAX, 0]),
    )
    .unwrap();
    assert_eq!(a.index_of(u64::MAX), Some(1));
    assert_eq!(a.put_page(u64::MAX), PutPage::Freed);
    assert_eq!(a.put_page(u64::MAX - 1), PutPage::Freed);
    assert_eq!(a.put_page(0), PutPage::Last);
}

/// The owner and pagemap calls through the harness: `set_owner` (an explicit owner, then back to
/// the pagemap's), `detach_pagemap` of a peer (then of the local pagemap, which stays), a second
/// `attach_pagemap` of the same peer, an impostor under a peer's and under the local id
/// (refused), a fresh pagemap under a free id, and the free migration functions on both
/// devices' pagemaps around faults, with the invariants checked after every call.
#[test]
fn owner_and_pagemap_calls() {
    use gpusvm::sim::harness::api::{Id, PagemapSpec};
    let arena = |page: u16| Num::Arena { page, offset: 0 };
    let direct =
        |dev: u8, start: Num, end: Num, to_devmem: bool, traced: bool| ApiOp::MigrateDirect {
            dev,
            start,
            end,
            to_devmem,
            traced,
            timeslice_ns: Num::Raw(0),
            same_pagemap: false,
            source_peer: traced,
        };
    let fault = |dev: u8, page: u16| ApiOp::HandleFault {
        dev,
        addr: arena(page),
        access: 1,
        window: None,
    };
    let ops = vec![
        ApiOp::CpuWrite { page: 3, value: 7 },
        fault(0, 3),
        ApiOp::SetOwner {
            dev: 0,
            owner: Some(Id::Raw(1234)),
        },
        fault(0, 3),
        ApiOp::SetOwner {
            dev: 0,
            owner: None,
        },
        // Device 1's pagemap is attached to device 0 by the simulator: attaching it again is
        // a no-op, an impostor under its id or under device 0's own id is refused.
        ApiOp::AttachPagemap {
            dev: 0,
            pagemap: PagemapSpec::Device(1),
        },
        ApiOp::AttachPagemap {
            dev: 0,
            pagemap: PagemapSpec::Fresh {
                id: Id::Device(1),
                owner: Id::Device(0),
            },
        },
        ApiOp::AttachPagemap {
            dev: 0,
            pagemap: PagemapSpec::Fresh {
                id: Id::Device(0),
                owner: Id::Device(0),
            },
        },
        ApiOp::AttachPagemap {
            dev: 1,
            pagemap: PagemapSpec::Fresh {
                id: Id::Raw(77),
                owner: Id::Device(1),
            },
        },
        // Device 1's pages in an arena slot, then device 0 loses and regains the pagemap.
        direct(1, arena(512), arena(528), true, false),
        ApiOp::DetachPagemap {
            dev: 0,
            id: Id::Device(1),
        },
        ApiOp::DetachPagemap {
            dev: 0,
            id: Id::Device(1),
        },
        ApiOp::DetachPagemap {
            dev: 0,
            id: Id::Device(0),
        },
        ApiOp::DetachPagemap {
            dev: 1,
            id: Id::Raw(77),
        },
        fault(0, 520),
        ApiOp::AttachPagemap {
            dev: 0,
            pagemap: PagemapSpec::Device(1),
        },
        fault(0, 520),
        // Peer pages move into device 0 over the link, then everything goes back to RAM.
        direct(0, arena(512), arena(528), true, true),
        direct(0, arena(512), arena(528), true, true),
        direct(0, arena(512), arena(528), false, false),
        direct(1, arena(512), arena(528), false, false),
        // Refused intervals.
        direct(0, arena(512), arena(512), true, true),
        direct(0, Num::Raw(0x40_0000_0001), arena(528), false, false),
        direct(1, arena(528), arena(512), true, false),
        ApiOp::Close { dev: 0 },
        ApiOp::SetOwner {
            dev: 0,
            owner: Some(Id::Device(1)),
        },
        ApiOp::DetachPagemap {
            dev: 0,
            id: Id::Device(1),
        },
        direct(0, arena(0), arena(16), true, false),
    ];
    let mut setup = Setup {
        two_devices: true,
        link: true,
        ..Setup::default()
    };
    setup.devices[0].vram = 3;
    setup.devices[1].vram = 2;
    let input = ApiInput { setup, ops };
    let stats = match run_stats(&input) {
        Ok(s) => s,
        Err(e) => panic!("{e}\ninput: {input:?}"),
    };
    assert!(stats[0].migrations_to_devmem > 0, "{stats:?}");
}

/// Found while adding `attach_pagemap` to the API harness: attaching a different pagemap under
/// the id of the local pagemap replaced it in the set the device resolves its pages through, so
/// the device's own pages could no longer be evicted (`evict` failed with the impostor's copy
/// error, an error it does not document). A second pagemap under an attached id is now refused.
#[test]
fn attach_pagemap_refuses_a_second_pagemap_under_an_attached_id() {
    use gpusvm::pagemap::Pagemap;
    use gpusvm::platform::{OwnerId, PagemapId, VmaFlags};
    use gpusvm::sim::{SimDevice, SimDevmem, SimGpu, SimMm, SimPagemapArc, SimWorld};
    use gpusvm::{Access, Error, Window};
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let base = 0x40_0000_0000;
    mm.mmap_fixed(base, 2 << 20, VmaFlags::READ | VmaFlags::WRITE, false)
        .unwrap();
    let gpu = SimGpu::with_devmem(&mm, 0, 512, 0).unwrap();
    mm.write_u64(base, 42).unwrap();
    let r = gpu
        .svm
        .handle_fault(base, Access::Read, Window::ALL)
        .unwrap();
    let local = gpu.svm.pagemap().unwrap();
    assert!(
        local.live_allocations() > 0,
        "the range is in device memory"
    );
    // The same pagemap again: nothing to do.
    assert_eq!(gpu.svm.attach_pagemap(local.clone()), Ok(()));
    // Impostors under the local id and under a peer's id are refused; a free id is fine.
    let fresh = |id: u32, dev: u32| {
        Pagemap::new(
            PagemapId(id),
            OwnerId(0),
            SimDevmem(SimDevice::new(&world, dev)),
        )
        .unwrap()
    };
    assert_eq!(gpu.svm.attach_pagemap(fresh(0, 9)), Err(Error::Invalid));
    let peer = fresh(5, 10);
    assert_eq!(gpu.svm.attach_pagemap(peer.clone()), Ok(()));
    assert_eq!(gpu.svm.attach_pagemap(fresh(5, 11)), Err(Error::Invalid));
    assert!(SimPagemapArc::ptr_eq(
        &gpu.svm.pagemap_by_id(PagemapId(0)).unwrap(),
        &local
    ));
    assert!(SimPagemapArc::ptr_eq(
        &gpu.svm.pagemap_by_id(PagemapId(5)).unwrap(),
        &peer
    ));
    // The device's own pages still go back to RAM through its pagemap.
    let rep = gpu.svm.evict(&r).unwrap();
    assert!(rep.pages > 0);
    assert_eq!(local.live_allocations(), 0);
    assert_eq!(mm.read_u64(base), Ok(42));
    // Detaching: the local pagemap is not detached this way; a peer is, once.
    assert!(gpu.svm.detach_pagemap(PagemapId(0)).is_none());
    assert!(SimPagemapArc::ptr_eq(
        &gpu.svm.detach_pagemap(PagemapId(5)).unwrap(),
        &peer
    ));
    assert!(gpu.svm.detach_pagemap(PagemapId(5)).is_none());
    gpu.check().unwrap();

    // `set_pagemap` follows the same rule: a peer attached under the id is not replaced by a
    // new local pagemap; the current local one may be (same id, new memory) or set again.
    assert_eq!(gpu.svm.attach_pagemap(peer.clone()), Ok(()));
    assert_eq!(gpu.svm.set_pagemap(Some(fresh(5, 12))), Err(Error::Invalid));
    assert!(SimPagemapArc::ptr_eq(&gpu.svm.pagemap().unwrap(), &local));
    assert!(SimPagemapArc::ptr_eq(
        &gpu.svm.pagemap_by_id(PagemapId(5)).unwrap(),
        &peer
    ));
    assert_eq!(gpu.svm.set_pagemap(Some(local.clone())), Ok(()));
    let replacement = fresh(0, 13);
    assert_eq!(gpu.svm.set_pagemap(Some(replacement.clone())), Ok(()));
    assert!(SimPagemapArc::ptr_eq(
        &gpu.svm.pagemap().unwrap(),
        &replacement
    ));
    assert!(SimPagemapArc::ptr_eq(
        &gpu.svm.pagemap_by_id(PagemapId(0)).unwrap(),
        &replacement
    ));
    assert_eq!(gpu.svm.set_pagemap(None), Ok(()));
    assert!(gpu.svm.pagemap_by_id(PagemapId(0)).is_none());
    assert!(gpu.svm.pagemap_by_id(PagemapId(5)).is_some(), "peers stay");
}
