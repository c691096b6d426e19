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
}

impl Stats {
    pub(crate) fn inc(c: &AtomicUsize) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
