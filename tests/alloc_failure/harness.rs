//! Running a scenario: the dry run, the k-th allocation failing for every k, the checks after
//! each failure and the retry, the leak check.

use crate::fixture::*;
use gpusvm::migrate::MigrateDetails;
use gpusvm::sim::{AllocStats, SimAlloc};
use gpusvm::{Error, Result};

/// One scenario.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) setup: fn() -> Fx,
    pub(crate) step: fn(&Fx) -> Result<String>,
    /// The call is all-or-nothing: on error no page moved.
    pub(crate) atomic: bool,
    /// Where the library absorbs an allocation failure (the step returns `Ok` with the dry
    /// run's result): why. `None`: every failure must surface as `NoMem`.
    pub(crate) absorbs: Option<&'static str>,
    /// Why a failure (absorbed, or followed by the retry) may leave pages elsewhere than the
    /// dry run did (the data is still checked). `None`: the retry ends exactly where the dry
    /// run did.
    pub(crate) placement_may_differ: Option<&'static str>,
}

/// Absorbed by `Svm::evict`: the page snapshot that tells which pagemaps hold pages of the
/// range is an optimisation; without memory for it the eviction tries every attached pagemap,
/// with the same outcome.
pub(crate) const SNAPSHOT_FALLBACK: &str =
    "evict: a failed page snapshot tries every attached pagemap";

/// What a run of one scenario found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) n: u64,
    /// The k whose failure the library absorbed.
    pub(crate) absorbed: Vec<u64>,
    /// The k after which the pages ended elsewhere than in the dry run.
    pub(crate) placed_elsewhere: Vec<u64>,
}

pub(crate) fn allocs_since(before: AllocStats) -> (u64, u64) {
    let now = SimAlloc::stats();
    (now.allocs - before.allocs, now.failed - before.failed)
}

/// Everything the set-up, the step and the retry allocated is freed once the machine is gone,
/// and no allocation was made under a lock the invalidation path takes (or in the wrong
/// context under a spinning lock).
pub(crate) fn no_leak(what: &str) -> std::result::Result<(), String> {
    let s = SimAlloc::stats();
    if s.allocs != s.frees || s.live_bytes != 0 {
        return Err(format!("{what}: leak: {s:?}"));
    }
    if let Some(v) = SimAlloc::first_lock_violation() {
        return Err(format!(
            "{what}: {} lock-rule violations, first: {v}",
            s.lock_violations
        ));
    }
    Ok(())
}

/// Where the failing allocation was made: the crate's frames of its backtrace.
pub(crate) fn where_failed() -> String {
    let Some(bt) = SimAlloc::last_failure() else {
        return String::from("(no trace)");
    };
    let text = format!("{bt}");
    let frames: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            // "  12: path::to::function" (the "at file:line" lines are skipped).
            let (_, f) = l.trim().split_once(": ")?;
            let f = f.trim_start_matches('<');
            let crate_frame = f.starts_with("gpusvm::")
                && !f.starts_with("gpusvm::heap::")
                && !f.starts_with("gpusvm::sim::alloc::");
            crate_frame.then_some(f)
        })
        .take(6)
        .collect();
    format!("failing allocation made in:\n    {}", frames.join("\n    "))
}

pub(crate) fn run(sc: &Scenario) -> Report {
    let name = sc.name;
    SimAlloc::trace_failures(true);
    // The dry run: how many allocations the step makes, and what it returns.
    SimAlloc::reset();
    let fx = (sc.setup)();
    fx.check()
        .unwrap_or_else(|e| panic!("{name}: after set-up: {e}"));
    let before = SimAlloc::stats();
    let want = (sc.step)(&fx).unwrap_or_else(|e| panic!("{name}: dry run: {e:?}"));
    let (n, failed) = allocs_since(before);
    assert_eq!(failed, 0);
    let no_sleep = SimAlloc::stats().no_sleep - before.no_sleep;
    let want_place = fx.placement();
    fx.check()
        .unwrap_or_else(|e| panic!("{name}: after the dry run: {e}"));
    // What the step returns when it is repeated after succeeding (compared with the repeat
    // after an absorbed failure).
    let want_again = (sc.step)(&fx).unwrap_or_else(|e| panic!("{name}: dry run repeated: {e:?}"));
    fx.read_back()
        .unwrap_or_else(|e| panic!("{name}: dry run read-back: {e}"));
    fx.teardown()
        .unwrap_or_else(|e| panic!("{name}: dry run: {e}"));
    no_leak(name).unwrap_or_else(|e| panic!("{e} (dry run)"));

    let mut report = Report {
        n,
        ..Report::default()
    };
    let mut violations = Vec::new();
    for k in 1..=n {
        let want = Want {
            result: &want,
            again: &want_again,
            place: &want_place,
        };
        if let Err(e) = run_k(sc, k, n, &want, &mut report) {
            violations.push(e);
        }
    }
    eprintln!(
        "{name}: n = {n} ({no_sleep} NoSleep); absorbed at k = {:?}; placed elsewhere after k = \
         {:?}; {} violations",
        report.absorbed,
        report.placed_elsewhere,
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{name}: {} of {n} injected failures violate the contract:\n\n{}",
        violations.len(),
        violations.join("\n\n")
    );
    report
}

/// What the dry run found.
pub(crate) struct Want<'a> {
    /// The step's result.
    pub(crate) result: &'a str,
    /// The step's result when repeated after it succeeded.
    pub(crate) again: &'a str,
    /// Where the pages were after the step.
    pub(crate) place: &'a str,
}

/// One k: set up, fail the k-th allocation of the step, check, retry, tear down.
pub(crate) fn run_k(
    sc: &Scenario,
    k: u64,
    n: u64,
    want: &Want<'_>,
    report: &mut Report,
) -> std::result::Result<(), String> {
    let want_place = want.place;
    let ctx = format!("{}, allocation {k} of {n} failing", sc.name);
    SimAlloc::reset();
    let fx = (sc.setup)();
    let place0 = fx.placement();
    let before = SimAlloc::stats();
    SimAlloc::fail_after(k - 1, 1);
    let got = (sc.step)(&fx);
    SimAlloc::stop_failing();
    let (_, failed) = allocs_since(before);
    if failed != 1 {
        return Err(format!("{ctx}: the failure did not fire ({got:?})"));
    }
    let ctx = format!("{ctx}: {got:?}; {}", where_failed());
    if std::env::var_os("GPUSVM_ALLOC_VERBOSE").is_some() {
        eprintln!("{ctx}");
    }
    let place = fx.placement();
    let mut errs = Vec::new();
    match &got {
        Err(Error::NoMem) => {
            if sc.atomic && place != place0 {
                errs.push(format!("the failed call moved pages: {place0} -> {place}"));
            }
        }
        Ok(r) if sc.absorbs.is_some() => {
            if r != want.result {
                errs.push(format!(
                    "absorbed, but the result differs from the dry run's {:?}",
                    want.result
                ));
            }
            if place != want_place && sc.placement_may_differ.is_none() {
                errs.push(format!(
                    "absorbed, but pages are at {place}, dry run {want_place}"
                ));
            }
            report.absorbed.push(k);
        }
        _ => errs.push(String::from("expected Err(NoMem)")),
    }
    if let Err(e) = fx.check() {
        errs.push(format!("after the failure: {e}"));
    }
    // The retry (after an absorbed failure: the repeat), with nothing failing.
    let expect = if got.is_ok() { want.again } else { want.result };
    match (sc.step)(&fx) {
        Ok(again) if again == expect => {}
        other => errs.push(format!("retry returned {other:?}, dry run {expect:?}")),
    }
    let place = fx.placement();
    if place != want_place {
        if sc.placement_may_differ.is_none() {
            errs.push(format!(
                "after the retry pages are at {place}, dry run {want_place}"
            ));
        }
        report.placed_elsewhere.push(k);
    }
    if let Err(e) = fx.check() {
        errs.push(format!("after the retry: {e}"));
    }
    if let Err(e) = fx.read_back() {
        errs.push(format!("read-back: {e}"));
    }
    if let Err(e) = fx.teardown() {
        errs.push(e);
    }
    if let Err(e) = no_leak("teardown") {
        errs.push(e);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{ctx}\n  => {}", errs.join("\n  => ")))
    }
}

/// The step of the migration scenarios: device 0 migrates the whole buffer's range to its
/// device memory; the report is the step's result.
pub(crate) fn migrate_buf_to_devmem(fx: &Fx) -> Result<String> {
    let r = fx.range(0, fx.buf);
    let rep = fx
        .g(0)
        .svm
        .migrate_to_devmem(&r, &MigrateDetails::default())?;
    Ok(format!("{rep:?}"))
}
