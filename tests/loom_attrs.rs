//! Loom model: attribute updates (`Svm::set_attrs`, SPEC §8) racing the device fault path
//! (`Svm::handle_fault_and_bind`: `find_or_insert` + `get_pages` + `bind`) on the same range,
//! on the real [`Svm`] over the tiny platform of `loom_support` (no device memory, so only
//! system-memory policy: the atomic policy, whose answer a driver reads in its `bind` callback
//! through [`Svm::device_atomics`]).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_attrs -- --nocapture`.
//!
//! The device's page table is modelled by the bind records: a `bind` callback records the
//! range it bound, the `device_atomics` answer it would write into the device PTEs, and how
//! many zaps the platform had seen (read inside `bind`, i.e. under the notifier lock, which
//! every zap in the crate holds exclusively, so the count places the bind exactly among the
//! zaps). A bind not followed by a zap over its range is still live in the device at the end.
//! In every execution loom explores, after both threads finished:
//!
//! - **A range never straddles an attribute boundary**: every page of every range has the
//!   attributes of the range's first page (equal neighbours are merged by the store, so this
//!   is "the range lies inside one attribute interval").
//! - **No stale device mapping**: every bind still live in the device (no zap over its range
//!   after it) was made for a range whose pages are still valid, and its `device_atomics`
//!   answer is the one the current attributes give for every page of its range — i.e. a range
//!   whose attributes changed had its mappings cleared, or its bind saw the new attributes.
//! - **No DMA leak or double unmap**: every `unmap_page` hit a live mapping and the live
//!   mappings are exactly the committed entries of the ranges that exist.
//! - `set_attrs` returns `Ok`; the fault returns `Ok`; no deadlock (loom reports one if the two
//!   paths took the attribute, structure, notifier and page locks in conflicting orders).
//! - Recovery: faults on both pages afterwards succeed and the checks above still hold.
//!
//! Coverage (asserted after the exploration): for the straddling update, the fault's range
//! was seen created before the update and removed by it, and created inside the new interval
//! after it; for the inner update, a bind with the old answer later cleared by the update, and a
//! bind that already saw the new answer.
//!
//! Mutations of `src/svm/attrs.rs` these models catch (checked on a copy of the crate):
//! inner ranges not cleared by `set_attrs` (stale device mapping with the old atomic rights),
//! straddling ranges not removed (range straddles the new boundary).
//!
//! [`straddling_update_vs_fault`] found a bug in `find_or_insert` (see its doc comment), fixed
//! in `Svm::try_insert`.
#![cfg(loom)]

mod loom_support;

use gpusvm::platform::PAGE_SIZE;
use gpusvm::policy::{device_atomics, AtomicPolicy, AttrUpdate, DeviceAtomics};
use gpusvm::range::RangeArc;
use gpusvm::{Access, Range, Svm, Window};
use loom::thread;
use loom_support::*;
use std::sync::Arc;

type S = Svm<LoomPlatform>;

/// What a `bind` callback wrote into the (modelled) device page table.
#[derive(Debug, Clone, Copy)]
struct BindRec {
    start: u64,
    end: u64,
    atomics: DeviceAtomics,
    /// Zaps the platform had seen when the bind ran.
    zaps_before: usize,
}

fn cpu_atomics() -> AttrUpdate {
    AttrUpdate {
        atomic: Some(AtomicPolicy::Cpu),
        ..AttrUpdate::default()
    }
}

/// The device faults at `addr` and binds the range, recording what it wrote.
fn fault(svm: &S, addr: u64) -> (RangeArc, BindRec) {
    svm.handle_fault_and_bind(addr, Access::Read, Window::ALL, |r, entries| {
        assert!(!entries.is_empty());
        BindRec {
            start: r.start(),
            end: r.end(),
            atomics: svm.device_atomics(r),
            zaps_before: svm.platform().pt.zaps().len(),
        }
    })
    .unwrap_or_else(|e| panic!("handle_fault_and_bind({addr:#x}): {e:?}"))
}

/// Every range that exists, in address order.
fn ranges(svm: &S) -> Vec<RangeArc> {
    let mut v: Vec<RangeArc> = Vec::new();
    let mut a = BASE;
    while a < VMA_END {
        if let Some(r) = svm.find(a) {
            if !v.iter().any(|x| gpusvm::heap::Arc::ptr_eq(x, &r)) {
                v.push(r);
            }
        }
        a += PAGE_SIZE;
    }
    v
}

/// The atomic rights the current attributes give at `addr`.
fn rights_at(svm: &S, addr: u64) -> DeviceAtomics {
    device_atomics(svm.attrs_at(addr).atomic, &svm.config().policy)
}

/// The checks of the module docs, once nothing races any more.
fn check_final(svm: &S, binds: &[BindRec]) {
    let all = ranges(svm);
    for r in &all {
        let a0 = svm.attrs_at(r.start());
        let mut p = r.start();
        while p < r.end() {
            assert_eq!(
                svm.attrs_at(p),
                a0,
                "RANGE STRADDLES AN ATTRIBUTE BOUNDARY: [{:#x},{:#x}) has {:?} at {:#x} and {:?} at {p:#x}",
                r.start(),
                r.end(),
                a0,
                r.start(),
                svm.attrs_at(p)
            );
            p += PAGE_SIZE;
        }
    }
    let zaps = svm.platform().pt.zaps();
    for b in binds {
        let zapped_later = zaps
            .iter()
            .skip(b.zaps_before)
            .any(|&(s, e)| s < b.end && b.start < e);
        if zapped_later {
            continue;
        }
        // Still live in the device: backed by a valid range, with the current rights.
        let r = all
            .iter()
            .find(|r| r.start() == b.start && r.end() == b.end)
            .unwrap_or_else(|| {
                panic!("STALE DEVICE MAPPING: bind {b:?} never zapped, its range is gone")
            });
        assert!(
            svm.pages_valid(r),
            "STALE DEVICE MAPPING: bind {b:?} never zapped, its pages are not valid"
        );
        let mut p = b.start;
        while p < b.end {
            assert_eq!(
                b.atomics,
                rights_at(svm, p),
                "STALE DEVICE MAPPING: bind {b:?} wrote old atomic rights, never zapped (at {p:#x})"
            );
            p += PAGE_SIZE;
        }
    }
    let dma = &svm.platform().dma;
    assert_eq!(
        dma.violations(),
        Vec::<String>::new(),
        "DMA unmap violations"
    );
    let mut want: Vec<(u64, u8)> = all
        .iter()
        .filter_map(|r| committed(svm, r))
        .flatten()
        .collect();
    want.sort_unstable();
    assert_eq!(
        dma.live(),
        want,
        "live DMA mappings differ from the committed entries"
    );
}

/// After the race: fault both pages again; every check still holds and the binds are current.
fn check_recovers(svm: &S, mut binds: Vec<BindRec>) {
    for addr in [BASE, BASE + PAGE_SIZE] {
        let (r, b) = fault(svm, addr);
        assert_bound_pages_current_any(svm, &r);
        assert_eq!(
            b.atomics,
            rights_at(svm, addr),
            "a fresh bind saw old rights"
        );
        binds.push(b);
    }
    check_final(svm, &binds);
}

/// Valid pages of `r` (any size) map the current CPU frames.
fn assert_bound_pages_current_any(svm: &S, r: &Range) {
    let _ = svm.bind(r, |r, entries| {
        for (k, e) in entries.iter().enumerate() {
            let i = ((r.start() - BASE) / PAGE_SIZE) as usize + k;
            assert_eq!(e.addr() >> 12, svm.platform().mm.frame(i), "stale entry");
        }
    });
}

fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join()
        .unwrap_or_else(|_| panic!("a model thread panicked"))
}

/// One race: a fault at `BASE` against `set_attrs([start, start+len), atomic = Cpu)`.
/// Returns the bind of the racing fault and the ranges after the race.
fn race(start: u64, len: u64) -> (Arc<S>, BindRec) {
    let svm = Arc::new(new_svm(3));
    let a = {
        let svm = svm.clone();
        thread::spawn(move || fault(&svm, BASE).1)
    };
    let b = {
        let svm = svm.clone();
        thread::spawn(move || svm.set_attrs(start, len, &cpu_atomics()))
    };
    let bind = join(a);
    assert_eq!(join(b), Ok(()), "set_attrs");
    (svm, bind)
}

/// `set_attrs` on the second page only: its left edge cuts the two-page chunk a fault at
/// `BASE` would create. Straddling ranges must be removed by the update, or created inside
/// the new interval after it.
///
/// **Found a bug** (fixed): `Svm::try_insert` read the
/// attribute extent at `addr` (`self.attrs.read().extent(addr)`) and inserts the range much
/// later, under the structure and notifier locks, without checking that the attributes did not
/// change in between; `set_attrs` updates the store and then looks for straddling ranges with
/// `first_overlapping` — which does not find the range that is not inserted yet. Interleaving
/// (loom, 2 threads): fault thread `try_insert` reads extent = whole mirror and selects chunk
/// `[BASE, BASE+2 pages)` → `set_attrs` thread writes atomic=Cpu on `[BASE+1 page, +1 page)`,
/// `refault_under_new_policy` finds no range → fault thread inserts `[BASE, BASE+2 pages)`,
/// collects and binds it. The range straddles the attribute boundary at `BASE+1 page`
/// forever (nothing removes it), and the bind wrote `device_atomics` of its first page
/// (device memory allowed) for a second page whose policy is `Cpu` (no device atomics).
/// The fix: `try_insert` re-reads `attrs.extent(addr)` inside the insert's notifier-write
/// section and refuses the insert (`Ok(false)`, so `find_or_insert` retries) when the chosen
/// chunk is no longer inside it; without it this model fails:
/// `set_attrs` writes the store before it takes the notifier lock in `first_overlapping`, so
/// either the insert sees the new extent or `set_attrs` sees the inserted range. The attribute
/// lock is then taken inside the structure and notifier locks, an order the lock table in
/// `src/sync/mod.rs` already allows (`ATTRS` ranks after both).
#[test]
fn straddling_update_vs_fault() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, bind) = race(BASE + PAGE_SIZE, PAGE_SIZE);
        check_final(&svm, &[bind]);
        c.hit(match (bind.end - bind.start) / PAGE_SIZE {
            2 => "bound the two-page range before the update (then removed)",
            1 => "bound a one-page range inside the new interval",
            _ => "other",
        });
        c.execution();
        check_recovers(&svm, vec![bind]);
    });
    let n = cov.expect(&[
        "bound the two-page range before the update (then removed)",
        "bound a one-page range inside the new interval",
    ]);
    println!("straddling_update_vs_fault: {n} executions");
}

const OLD_CLEARED: &str = "bound with the old rights, then cleared by the update";
const NEW_SEEN: &str = "bound with the new rights";

/// `set_attrs` over exactly the range a fault at `BASE` creates: the range stays, its device
/// mappings are cleared if it was bound under the old policy.
#[test]
fn inner_update_vs_fault() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, bind) = race(BASE, END - BASE);
        assert_eq!(
            (bind.start, bind.end),
            (BASE, END),
            "one chunk, no edge inside"
        );
        check_final(&svm, &[bind]);
        let new = rights_at(&svm, BASE);
        assert_eq!(new, DeviceAtomics::NONE);
        c.hit(if bind.atomics == new {
            NEW_SEEN
        } else {
            OLD_CLEARED
        });
        c.execution();
        // The range was not removed (an inner range keeps its place).
        assert_eq!(svm.counts(), (1, 1));
        check_recovers(&svm, vec![bind]);
    });
    let n = cov.expect(&[OLD_CLEARED, NEW_SEEN]);
    println!("inner_update_vs_fault: {n} executions");
}

/// An update whose right edge cuts the chunk from the other side (`[0, BASE+1 page)`) racing a
/// fault at `BASE + 1 page`, with the fault at `BASE` already done: the existing two-page
/// range straddles the new edge and must be removed; the racing fault either refaults it
/// before the update (and it is removed with its bind zapped) or builds a one-page range
/// after. Exercises the straddle-removal path (`remove` from `set_attrs`) against a concurrent
/// `find_or_insert`/`get_pages`/`bind` of the same range, without the creation race above.
#[test]
fn straddling_update_vs_fault_on_existing_range() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let svm = Arc::new(new_svm(3));
        let (r0, b0) = fault(&svm, BASE);
        assert_eq!((r0.start(), r0.end()), (BASE, END));
        let a = {
            let svm = svm.clone();
            thread::spawn(move || fault(&svm, BASE + PAGE_SIZE).1)
        };
        let b = {
            let svm = svm.clone();
            thread::spawn(move || svm.set_attrs(0, BASE + PAGE_SIZE, &cpu_atomics()))
        };
        let bind = join(a);
        assert_eq!(join(b), Ok(()), "set_attrs");
        check_final(&svm, &[b0, bind]);
        assert!(
            svm.find(BASE)
                .is_none_or(|r| !gpusvm::heap::Arc::ptr_eq(&r, &r0)),
            "straddling range kept"
        );
        c.hit(match (bind.end - bind.start) / PAGE_SIZE {
            2 => "bound the old two-page range before the update (then removed)",
            1 => "bound a one-page range after the update",
            _ => "other",
        });
        c.execution();
        check_recovers(&svm, vec![b0, bind]);
    });
    let n = cov.expect(&[
        "bound the old two-page range before the update (then removed)",
        "bound a one-page range after the update",
    ]);
    println!("straddling_update_vs_fault_on_existing_range: {n} executions");
}
