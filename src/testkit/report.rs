//! What a scenario group returns: counts and the first failure, as values (no panic, no
//! allocation), printable with `core::fmt`.

use crate::Error;
use core::fmt;

/// Why a scenario failed: which check, at which address, what it expected and what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The scenario (`group/name`-style name of the function, e.g. `"munmap_partial_range"`).
    pub scenario: &'static str,
    /// What was checked (e.g. `"device read after munmap"`).
    pub check: &'static str,
    /// The address the check looked at (0 when none applies).
    pub addr: u64,
    /// The value expected (for a yes/no check: 1 = yes, 0 = no; for an expected error: its
    /// errno as an unsigned value, see [`Failure::error`]).
    pub expected: u64,
    /// The value found.
    pub found: u64,
    /// The error a call returned, when the check failed because of it (or because it was not
    /// the expected one).
    pub error: Option<Error>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} at {:#x}: expected {:#x}, found {:#x}",
            self.scenario, self.check, self.addr, self.expected, self.found
        )?;
        if let Some(e) = self.error {
            write!(f, " (error {})", e.name())?;
        }
        Ok(())
    }
}

/// The outcome of a scenario group: how many scenarios passed, were skipped (the backend lacks
/// a capability the scenario needs: an `mmap`, device memory, a second device, a peer link) or
/// failed, and the first failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// Scenarios that ran every check successfully.
    pub passed: u32,
    /// Scenarios skipped for a missing capability.
    pub skipped: u32,
    /// Scenarios with a failed check (each stops at its first failed check).
    pub failed: u32,
    /// The first failed check of the group.
    pub first_failure: Option<Failure>,
}

impl Report {
    /// Whether no scenario failed.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// Add the counts of `other` (keeping the first failure seen).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn merge(&mut self, other: &Report) {
        self.passed = self.passed.saturating_add(other.passed);
        self.skipped = self.skipped.saturating_add(other.skipped);
        self.failed = self.failed.saturating_add(other.failed);
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    /// Count one scenario's outcome.
    pub(crate) fn record(&mut self, outcome: core::result::Result<(), Stop>) {
        match outcome {
            Ok(()) => self.passed = self.passed.saturating_add(1),
            Err(Stop::Skip) => self.skipped = self.skipped.saturating_add(1),
            Err(Stop::Fail(f)) => {
                self.failed = self.failed.saturating_add(1);
                if self.first_failure.is_none() {
                    self.first_failure = Some(f);
                }
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} skipped, {} failed",
            self.passed, self.skipped, self.failed
        )?;
        if let Some(first) = &self.first_failure {
            write!(f, "; first failure: {first}")?;
        }
        Ok(())
    }
}

/// Why a scenario stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The backend lacks a capability the scenario needs.
    Skip,
    /// A check failed.
    Fail(Failure),
}
