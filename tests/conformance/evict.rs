//! Eviction under memory pressure: device memory too small for the working set, evictions that
//! fail half-way, and system memory too full to take evicted pages.

use crate::harness::*;
use gpusvm::policy::PrefetchLoc;
use gpusvm::Error;

/// xe_exec_system_allocator `evict-malloc`: the GPU's working set (sixteen 64 KiB ranges,
/// 1 MiB) is four times its device memory (256 KiB). Touching the buffers round-robin keeps
/// evicting older ranges to make room: device memory never overflows, every eviction releases
/// its allocation exactly once, and no value is lost on either side.
#[test]
fn evict_malloc_tiny_vram() {
    let mut m = Machine::new(&[]);
    m.join(0, 64);
    let bufs: Vec<u64> = (0..8).map(|_| m.mmap(2 * K64)).collect();
    for (i, &b) in bufs.iter().enumerate() {
        m.cpu_fill(b, b + 2 * K64, P, i as u64 + 1);
    }
    let mut peak = 0;
    for round in 0..3u64 {
        for &b in &bufs {
            m.dev_write(0, b + 8, tag(b + 8, 10 + round));
            m.dev_write(0, b + K64 + 8, tag(b + K64 + 8, 10 + round));
            peak = peak.max(m.vram_used(0));
            assert!(m.live_allocs(0) <= 4);
        }
    }
    assert_eq!(
        peak, 64,
        "device memory used to the last page, never beyond"
    );
    let s = m.stats(0);
    assert!(s.evictions >= 24, "{s:?}");
    assert_eq!(s.faults, s.migrations_to_devmem, "every fault migrated");
    assert_eq!(
        s.evictions,
        s.migrations_to_devmem - m.live_allocs(0),
        "every range not resident now was evicted exactly once per migration"
    );
    assert_eq!(
        s.migrate_failures, s.evictions,
        "each first attempt that found memory full made room with one eviction and retried"
    );
    let (allocs, releases) = m.g(0).dev.vram_counts();
    assert_eq!(allocs - releases, m.live_allocs(0) as u64);
    for &b in &bufs {
        m.dev_verify(0, b, b + 2 * K64);
    }
    for &b in &bufs {
        m.cpu_verify(b, b + 2 * K64);
    }
    assert_eq!(m.live_allocs(0), 0);
}

/// xe_exec_system_allocator `evict-*` with a failing copy engine (the all-or-nothing rule of
/// hmm-tests `migrate_anon_huge_err` applied to eviction): device memory is full and the copy
/// that would evict a victim fails. The victim stays in device memory with its data, the new
/// range falls back to system memory ("migrate once"), nothing leaks; the next range that needs
/// room evicts the victim normally.
#[test]
fn evict_copy_failure_keeps_data() {
    let mut m = Machine::new(&[]);
    m.join(0, 32);
    let a = m.mmap(2 * K64);
    m.cpu_fill(a, a + 2 * K64, P, 1);
    m.dev_write(0, a + 8, 11);
    m.dev_write(0, a + K64 + 8, 12);
    assert!(m.all_at(a, a + 2 * K64, Loc::Dev(0)));
    assert_eq!(m.vram_used(0), 32);
    let c = m.mmap(K64);
    m.cpu_fill(c, c + K64, P, 2);
    let s0 = m.stats(0);

    m.g(0).dev.inject_copy_fail_at(1, 0);
    m.dev_write(0, c + 8, 13);
    assert_eq!(
        m.g(0).dev.pending_injections().1,
        0,
        "the injected copy failure fired"
    );
    let s1 = m.stats(0);
    assert_eq!(s1.migrate_failures, s0.migrate_failures + 1);
    assert_eq!(
        s1.evictions, s0.evictions,
        "the failed eviction is not counted"
    );
    assert!(m.all_at(c, c + K64, Loc::Ram), "fell back to system memory");
    assert!(m.all_at(a, a + 2 * K64, Loc::Dev(0)), "the victim stayed");
    assert_eq!(m.live_allocs(0), 2);
    m.dev_verify(0, a, a + 2 * K64);
    m.dev_verify(0, c, c + K64);
    assert_eq!(
        m.stats(0).migrations_to_devmem,
        s1.migrations_to_devmem,
        "migrate once"
    );

    let d = m.mmap(K64);
    m.cpu_fill(d, d + K64, P, 3);
    m.dev_write(0, d + 8, 14);
    let s2 = m.stats(0);
    assert_eq!(s2.evictions, s1.evictions + 1);
    assert!(m.all_at(d, d + K64, Loc::Dev(0)));
    assert_eq!(m.vram_used(0), 32);
    m.cpu_verify(a, a + 2 * K64);
    m.cpu_verify(c, c + K64);
    m.cpu_verify(d, d + K64);
}

/// xe_exec_system_allocator `evict-*` when system memory is exhausted (SPEC §7: a failed
/// migration loses nothing and leaks nothing): pages in device memory cannot come back while
/// RAM is full. The CPU access, an explicit eviction and a prefetch to system memory all fail
/// with `NoMem` and leave every page where it was; once RAM is available again, everything comes
/// back intact.
#[test]
fn evict_with_system_memory_full() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_fill(0, buf + 8, buf + M2, 16 * P, 2);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    let frames = m.world.live_frames();
    m.world.set_ram_limit(Some(frames));

    assert_eq!(m.cpu_read_in(0, buf), Err(Error::NoMem));
    let r = m.g(0).svm.find(buf).unwrap();
    let e = m.step("evict", |m| m.g(0).svm.evict(&r).map(|_| ()));
    assert_eq!(e, Err(Error::NoMem));
    assert_eq!(
        m.prefetch(0, buf, M2, PrefetchLoc::System),
        Err(Error::NoMem)
    );
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)), "nothing moved");
    assert_eq!(m.live_allocs(0), 1);
    assert_eq!(
        m.world.live_frames(),
        frames,
        "no frame leaked by the failures"
    );
    m.dev_verify(0, buf, buf + M2);

    m.world.set_ram_limit(None);
    m.prefetch(0, buf, M2, PrefetchLoc::System).unwrap();
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert_eq!(m.live_allocs(0), 0);
    m.cpu_verify(buf, buf + M2);
}
