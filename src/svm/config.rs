//! The configuration of an [`Svm`](super::Svm): the mirrored interval, notifier size, chunk
//! sizes and the policy knobs (SPEC §1).

use crate::error::{Error, Result};
use crate::pages::RetryPolicy;
use crate::platform::{OwnerId, PAGE_SIZE};
use crate::policy::PolicyConfig;
use crate::range::check_chunk_sizes;

/// Largest number of chunk sizes an [`SvmConfig`] holds.
pub const MAX_CHUNK_SIZES: usize = 8;

/// Configuration of an [`Svm`](crate::Svm) (SPEC §1). Build it with [`SvmConfig::new`] and adjust fields;
/// [`Svm::new`](crate::Svm::new) validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvmConfig {
    /// Start of the mirrored interval (page aligned).
    pub mm_start: u64,
    /// Length of the mirrored interval (page aligned, non-zero, not overflowing).
    pub mm_range: u64,
    /// Size of one notifier: a power of two, at least the largest chunk size [512 MiB].
    pub notifier_size: u64,
    /// Chunk sizes for new ranges, strictly descending powers of two, the last one `PAGE_SIZE`
    /// [2 MiB, 64 KiB, 4 KiB].
    pub chunk_sizes: heapless::Vec<u64, MAX_CHUNK_SIZES>,
    /// Candidate chunks larger than a page and at most this size need all their CPU pages
    /// present [64 KiB].
    pub check_pages_threshold: u64,
    /// Retry budget of page collections raced by invalidations.
    pub retry: RetryPolicy,
    /// The owner (interconnect group) of this device: device-private pages of this owner are
    /// used in place. `None` until the device joins an owner.
    pub owner: Option<OwnerId>,
    /// Place faulting ranges in this device's memory when it has a pagemap (the plain
    /// "prefer device memory" switch; the policy engine refines it) [false].
    pub prefer_devmem: bool,
    /// Minimum residency in device memory after a migration caused by an atomic fault, before
    /// a CPU fault may pull the pages back [5 ms].
    pub atomic_timeslice_ns: u64,
    /// In device → device migrations, the source's copy engine copies (else the target's)
    /// [false].
    pub source_peer_migrates: bool,
    /// Pages already in the target pagemap may be migrated again instead of making a
    /// partly-resident range fail with `Busy` [false].
    pub can_migrate_same_pagemap: bool,
    /// Thresholds and budgets of the policy engine.
    pub policy: PolicyConfig,
}

/// 2 MiB.
const SZ_2M: u64 = 2 << 20;
/// 64 KiB.
const SZ_64K: u64 = 64 << 10;

impl SvmConfig {
    /// A configuration with the SPEC defaults for the interval `[mm_start, mm_start+mm_range)`.
    ///
    /// ```
    /// let c = gpusvm::SvmConfig::new(0, 1 << 47);
    /// assert_eq!(c.notifier_size, 512 << 20);
    /// assert_eq!(&c.chunk_sizes[..], &[2 << 20, 64 << 10, 4096]);
    /// ```
    ///
    /// Context: any; allocates nothing.
    pub fn new(mm_start: u64, mm_range: u64) -> Self {
        let mut chunk_sizes = heapless::Vec::new();
        for s in [SZ_2M, SZ_64K, PAGE_SIZE] {
            // Capacity 8 > 3: cannot fail.
            let _ = chunk_sizes.push(s);
        }
        SvmConfig {
            mm_start,
            mm_range,
            notifier_size: 512 << 20,
            chunk_sizes,
            check_pages_threshold: SZ_64K,
            retry: RetryPolicy::default(),
            owner: None,
            prefer_devmem: false,
            atomic_timeslice_ns: 5_000_000,
            source_peer_migrates: false,
            can_migrate_same_pagemap: false,
            policy: PolicyConfig::default(),
        }
    }

    /// Replace the chunk sizes. Errors: [`Error::Invalid`] if more than [`MAX_CHUNK_SIZES`].
    ///
    /// Context: any; allocates nothing (the list is inline).
    pub fn with_chunk_sizes(mut self, sizes: &[u64]) -> Result<Self> {
        self.chunk_sizes = heapless::Vec::from_slice(sizes).map_err(|_| Error::Invalid)?;
        Ok(self)
    }

    /// End of the mirrored interval (exclusive).
    ///
    /// Context: any; allocates nothing.
    pub fn mm_end(&self) -> u64 {
        self.mm_start.saturating_add(self.mm_range)
    }

    /// Check the configuration. Errors: [`Error::Invalid`] for a misaligned, empty or
    /// overflowing interval, a malformed chunk list (empty, unsorted, not powers of two, not
    /// ending with `PAGE_SIZE`), or a notifier size that is not a power of two or is smaller
    /// than the largest chunk.
    ///
    /// Context: any; allocates nothing.
    pub fn validate(&self) -> Result<()> {
        let bad = self.mm_range == 0
            || self.mm_start % PAGE_SIZE != 0
            || self.mm_range % PAGE_SIZE != 0
            || self.mm_start.checked_add(self.mm_range).is_none();
        if bad {
            return Err(Error::Invalid);
        }
        check_chunk_sizes(&self.chunk_sizes)?;
        let Some(&first) = self.chunk_sizes.first() else {
            return Err(Error::Invalid);
        };
        if !self.notifier_size.is_power_of_two() || self.notifier_size < first {
            return Err(Error::Invalid);
        }
        Ok(())
    }
}
