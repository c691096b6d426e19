//! Property test of the policy attribute store (`AttrStore`, SPEC §8) against a per-page model:
//! a `Vec<Attrs>` over a small address space, updated by the test's own `model_set` (not the
//! crate's `AttrUpdate::apply`). After every `set` of a random sequence:
//!
//! - `get` agrees with the model at every address (and beyond the modelled space: defaults);
//! - the stored segments are sorted, non-empty and never overlap;
//! - no stored segment holds the default attributes;
//! - no two adjacent stored segments have equal attributes (merging is maximal), so the
//!   segments are exactly the maximal runs of non-default attributes in the model;
//! - `would_change` predicted whether the model changed, and `extent` is the maximal run of
//!   equal attributes around an address.
//!
//! A `set` with `start >= end` is refused with `Invalid` and leaves the store unchanged.

use gpusvm::heap::AllocCtx;
use gpusvm::platform::PagemapId;
use gpusvm::policy::{AtomicPolicy, AttrStore, AttrUpdate, Attrs, MigrationPolicy, PreferredLoc};
use gpusvm::DefaultHost;

const C: AllocCtx = AllocCtx::MaySleep;
use gpusvm::Error;
use proptest::prelude::*;

/// Addresses `0..N` are modelled (unit granularity: the store itself has no alignment rule).
const N: u64 = 48;

/// The attributes of an address nothing was set on, written out here (not `Attrs::default()`)
/// so that the model does not take the crate's word for them; `crate_default_is_the_model_default`
/// checks that the crate agrees.
const DEFAULT: Attrs = Attrs {
    preferred: PreferredLoc::DeviceDefault,
    migration: MigrationPolicy::AllPages,
    atomic: AtomicPolicy::Undefined,
};

/// The model's `set`: every attribute the update carries replaces that attribute of each page of
/// `[start, end)`; the others stay. Written here, independent of `AttrUpdate::apply` and of
/// the store's interval logic.
fn model_set(model: &mut [Attrs], start: u64, end: u64, u: &AttrUpdate) {
    for page in &mut model[start as usize..end as usize] {
        if let Some(p) = u.preferred {
            page.preferred = p;
        }
        if let Some(m) = u.migration {
            page.migration = m;
        }
        if let Some(a) = u.atomic {
            page.atomic = a;
        }
    }
}

#[test]
fn crate_default_is_the_model_default() {
    assert_eq!(Attrs::default(), DEFAULT);
    assert_eq!(AttrStore::<DefaultHost>::new().get(0), DEFAULT);
}

fn preferred() -> impl Strategy<Value = PreferredLoc> {
    prop_oneof![
        Just(PreferredLoc::DeviceDefault),
        Just(PreferredLoc::System),
        (0u32..3).prop_map(|i| PreferredLoc::Pagemap(PagemapId(i))),
    ]
}

fn migration() -> impl Strategy<Value = MigrationPolicy> {
    prop_oneof![
        Just(MigrationPolicy::AllPages),
        Just(MigrationPolicy::SystemPagesOnly)
    ]
}

fn atomic() -> impl Strategy<Value = AtomicPolicy> {
    prop_oneof![
        Just(AtomicPolicy::Undefined),
        Just(AtomicPolicy::Device),
        Just(AtomicPolicy::Global),
        Just(AtomicPolicy::Cpu),
    ]
}

fn update() -> impl Strategy<Value = AttrUpdate> {
    // Defaults are drawn often so that the store also shrinks and gaps reappear.
    (
        prop::option::weighted(0.6, preferred()),
        prop::option::weighted(0.4, migration()),
        prop::option::weighted(0.4, atomic()),
    )
        .prop_map(|(preferred, migration, atomic)| AttrUpdate {
            preferred,
            migration,
            atomic,
        })
}

/// `(start, end, update)`; `start >= end` happens now and then (refused).
fn op() -> impl Strategy<Value = (u64, u64, AttrUpdate)> {
    (0..=N, 0..=N, update())
}

/// The maximal runs of non-default attributes of the model.
fn runs(model: &[Attrs]) -> Vec<(u64, u64, Attrs)> {
    let mut out: Vec<(u64, u64, Attrs)> = Vec::new();
    for (i, a) in model.iter().enumerate() {
        let i = i as u64;
        if *a == DEFAULT {
            continue;
        }
        match out.last_mut() {
            Some((_, e, b)) if *e == i && b == a => *e = i + 1,
            _ => out.push((i, i + 1, *a)),
        }
    }
    out
}

fn check(store: &AttrStore, model: &[Attrs]) -> Result<(), TestCaseError> {
    let segs: Vec<(u64, u64, Attrs)> = store.iter().collect();
    prop_assert_eq!(store.segments(), segs.len());
    let mut prev: Option<(u64, u64, Attrs)> = None;
    for &(s, e, a) in &segs {
        prop_assert!(s < e, "empty segment [{}, {})", s, e);
        prop_assert!(e <= N, "segment [{}, {}) beyond anything set", s, e);
        prop_assert_ne!(a, DEFAULT, "default stored at [{}, {})", s, e);
        if let Some((ps, pe, pa)) = prev {
            prop_assert!(pe <= s, "[{}, {}) overlaps [{}, {})", ps, pe, s, e);
            prop_assert!(
                !(pe == s && pa == a),
                "equal neighbours [{}, {}) and [{}, {}) not merged",
                ps,
                pe,
                s,
                e
            );
        }
        prev = Some((s, e, a));
    }
    for x in 0..N {
        prop_assert_eq!(store.get(x), model[x as usize], "get({})", x);
    }
    for x in [N, N + 1, 1 << 40, u64::MAX] {
        prop_assert_eq!(store.get(x), DEFAULT, "get({}) beyond the model", x);
    }
    prop_assert_eq!(
        segs,
        runs(model),
        "segments are the maximal non-default runs"
    );
    // extent: the maximal run of equal attributes around x.
    for x in 0..N {
        let (lo, hi) = store.extent(x);
        let a = model[x as usize];
        prop_assert!(lo <= x && x < hi, "extent({}) = [{}, {})", x, lo, hi);
        let mut want_lo = x;
        while want_lo > 0 && model[want_lo as usize - 1] == a {
            want_lo -= 1;
        }
        let mut want_hi = x + 1;
        while want_hi < N && model[want_hi as usize] == a {
            want_hi += 1;
        }
        if want_hi == N && a == DEFAULT {
            want_hi = u64::MAX;
        }
        prop_assert_eq!((lo, hi), (want_lo, want_hi), "extent({})", x);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn attr_store_matches_per_page_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut store: AttrStore = AttrStore::new();
        let mut model = vec![DEFAULT; N as usize];
        check(&store, &model)?;
        for (start, end, u) in ops {
            if start >= end {
                let before = store.try_clone(C).unwrap();
                prop_assert_eq!(store.set(start, end, &u, C), Err(Error::Invalid));
                prop_assert_eq!(&store, &before, "a refused set changed the store");
                continue;
            }
            let mut next = model.clone();
            model_set(&mut next, start, end, &u);
            prop_assert_eq!(
                store.would_change(start, end, &u),
                next != model,
                "would_change([{}, {}), {:?})",
                start,
                end,
                u
            );
            prop_assert_eq!(store.set(start, end, &u, C), Ok(()));
            model = next;
            check(&store, &model)?;
        }
        // Back to defaults everywhere: the store empties.
        let reset = AttrUpdate {
            preferred: Some(PreferredLoc::DeviceDefault),
            migration: Some(MigrationPolicy::AllPages),
            atomic: Some(AtomicPolicy::Undefined),
        };
        prop_assert_eq!(store.set(0, N, &reset, C), Ok(()));
        prop_assert_eq!(store.segments(), 0);
    }

    /// Far-apart and boundary addresses (the top of the address space) behave the same.
    #[test]
    fn attr_store_handles_extreme_addresses(
        base in prop::sample::select(vec![0u64, 1 << 47, u64::MAX - 4 * N]),
        ops in prop::collection::vec(op(), 1..20),
    ) {
        let mut store: AttrStore = AttrStore::new();
        let mut model = vec![DEFAULT; N as usize];
        for (start, end, u) in ops {
            if start >= end {
                continue;
            }
            store.set(base + start, base + end, &u, C).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            model_set(&mut model, start, end, &u);
            for x in 0..N {
                prop_assert_eq!(store.get(base + x), model[x as usize]);
            }
            let shifted: Vec<(u64, u64, Attrs)> =
                runs(&model).into_iter().map(|(s, e, a)| (base + s, base + e, a)).collect();
            prop_assert_eq!(store.iter().collect::<Vec<_>>(), shifted);
        }
    }
}
