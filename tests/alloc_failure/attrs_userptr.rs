//! Scenarios: attribute updates, a userptr collection and attaching a pagemap, each with its
//! k-th allocation failing.

use crate::fixture::*;
use crate::harness::*;
use gpusvm::pagemap::Pagemap;
use gpusvm::pages::{PagesCtx, RetryPolicy};
use gpusvm::platform::{OwnerId, PagemapId};
use gpusvm::policy::{AttrUpdate, PreferredLoc, RawAttr};
use gpusvm::sim::SimGpu;
use gpusvm::sim::{SimDevice, SimDevmem};
use gpusvm::Userptr;

// ---- attributes -----------------------------------------------------------------------------

/// `Svm::set_attrs` over an interval that straddles two ranges in device memory: they are
/// evicted and removed.
///
/// Absorbed: after the attribute store is updated (the call's only failure point, which
/// leaves the store unchanged), the straddling ranges are evicted "where possible" — pages
/// that cannot be evicted stay in device memory, still mapped by the CPU (nothing is lost), and
/// the ranges are removed anyway, so a failure there is not an error of the call.
#[test]
fn set_attrs_straddling() {
    run(&Scenario {
        name: "set_attrs straddling ranges in device memory",
        setup: || {
            let fx = Fx::devmem(2 * K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            let u = AttrUpdate {
                preferred: Some(PreferredLoc::System),
                ..AttrUpdate::default()
            };
            fx.g(0).svm.set_attrs(fx.buf + K64 / 2, K64, &u)?;
            Ok(format!("{:?}", fx.g(0).svm.attrs_at(fx.buf + K64)))
        },
        atomic: false,
        absorbs: Some("a failed eviction of a straddling range leaves its pages in device memory"),
        placement_may_differ: Some("pages a failed eviction left stay in device memory"),
    });
}

/// `Svm::set_attrs_raw` inside one range in system memory (it loses its device mappings).
#[test]
fn set_attrs_inner() {
    let r = run(&Scenario {
        name: "set_attrs_raw inside a range",
        setup: || {
            let fx = Fx::ram(K64);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            // kind 2: the atomic policy, value 2: global.
            let raw = [RawAttr {
                kind: 2,
                value: 2,
                reserved: 0,
            }];
            fx.g(0).svm.set_attrs_raw(fx.buf, fx.len, &raw)?;
            Ok(format!("{:?}", fx.g(0).svm.attrs_at(fx.buf)))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
    assert!(r.n > 0, "an attribute update allocates its segment array");
}

// ---- userptr and pagemaps ------------------------------------------------------------------

/// `Userptr::get_pages` (a driver's userptr, outside any `Svm`): the page array, the entries.
#[test]
fn userptr_get_pages() {
    let r = run(&Scenario {
        name: "userptr get_pages",
        setup: || {
            let mut fx = Fx::ram(K64);
            let u = Userptr::with_host(fx.buf, fx.buf + fx.len).expect("userptr");
            let g = SimGpu::new(&fx.mm, 1, cfg(false)).expect("device");
            fx.userptr = Some((u, g));
            fx
        },
        step: |fx| {
            let (u, g) = fx.userptr.as_ref().expect("userptr");
            u.get_pages(
                g.svm.platform(),
                &PagesCtx::default(),
                &RetryPolicy::default(),
            )?;
            let bytes = u.bind(|at, entries| {
                assert_eq!(at, fx.buf);
                entries.iter().map(|e| e.size()).sum::<u64>()
            })?;
            Ok(format!("bound {bytes:#x}"))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
    assert!(r.n > 0);
}

/// `Svm::attach_pagemap` of another device's pagemap (the pagemap set grows).
#[test]
fn attach_pagemap() {
    run(&Scenario {
        name: "attach_pagemap",
        setup: || {
            let mut fx = Fx::ram(K64);
            // A pagemap the device does not know (not registered with the machine).
            let dev = SimDevice::new(&fx.world, 1);
            dev.set_vram_pages(VRAM);
            let pm = Pagemap::new(PagemapId(1), OwnerId(0), SimDevmem(dev)).expect("pagemap");
            fx.pagemap = Some(pm);
            fx
        },
        step: |fx| {
            let pm = fx.pagemap.clone().expect("pagemap");
            fx.g(0).svm.attach_pagemap(pm)?;
            let attached = fx.g(0).svm.pagemap_by_id(PagemapId(1)).is_some();
            Ok(format!("attached {attached}"))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}
