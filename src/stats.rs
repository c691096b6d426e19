//! Counters of what an [`Svm`](crate::Svm) did. Relaxed atomics: cheap on the hot path, exact
//! once the activity they count has finished.

use crate::sync::{AtomicUsize, Ordering};

macro_rules! counters {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        /// Live counters (inside an `Svm`).
        #[derive(Debug, Default)]
        pub struct Stats { $( $(#[$m])* pub(crate) $name: AtomicUsize, )* }

        /// A point-in-time copy of [`Stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot { $( $(#[$m])* pub $name: usize, )* }

        impl Stats {
            /// Copy the counters.
            ///
            /// Context: any; relaxed atomic loads, never sleeps, allocates nothing, takes no lock.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Device faults serviced (any access kind).
    faults,
    /// Device read faults.
    faults_read,
    /// Device write faults.
    faults_write,
    /// Device atomic faults.
    faults_atomic,
    /// Page collections dropped and retried because an invalidation raced them.
    retries,
    /// Ranges created.
    ranges_created,
    /// Ranges removed.
    ranges_removed,
    /// `invalidate_begin` calls that reached a notifier.
    invalidations,
    /// Garbage-collector runs that found work.
    gc_runs,
    /// Ranges processed by the garbage collector.
    gc_ranges,
    /// Page collections committed.
    pages_committed,
    /// Migrations of a range into device memory.
    migrations_to_devmem,
    /// Bytes copied (or zero-filled) into device memory.
    bytes_to_devmem,
    /// Migrations back to system memory (evictions and CPU faults done through this `Svm`).
    migrations_to_ram,
    /// Bytes copied back to system memory.
    bytes_to_ram,
    /// Copy-engine commands issued.
    copy_runs,
    /// Ranges evicted from device memory.
    evictions,
    /// Migration attempts to device memory that failed. The fault path may then make room
    /// (evict) or evict the range and try once more; only a final failure leaves the range in
    /// system memory and marks it "migrate once" failed.
    migrate_failures,
    /// Faults that required device memory and migrated again (the `devmem_only` budget).
    devmem_retries,
    /// Prefetches served.
    prefetches,
    /// `set_attrs` calls that actually changed an attribute.
    attr_changes,
}

impl Stats {
    pub(crate) fn inc(c: &AtomicUsize) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(c: &AtomicUsize, n: u64) {
        c.fetch_add(usize::try_from(n).unwrap_or(usize::MAX), Ordering::Relaxed);
    }
}
