#![cfg(feature = "sim")]
//! The policy engine (SPEC §8, §9) on the simulator, modelled on the madvise tests of a public
//! driver test suite (Intel Xe `xe_exec_system_allocator` with `madvise` sections): preferred
//! location, migration policy, atomic access policy, prefetch, the size threshold, "migrate
//! once", and what an attribute change does to ranges already bound on the device.
//!
//! Every step runs the simulator's invariant checker over every device and compares every
//! value of a CPU data model (`address -> last value written`) with what memory holds, read
//! without changing any state (system pages through the CPU, device pages straight from the
//! device memory). Every device or CPU read is also checked against the model.
//!
//! The bad-input test (`bad_input`) is table-driven: every bad input to `set_attrs`,
//! `set_attrs_raw` and `prefetch` returns its typed error and changes nothing.
//!
//! | module | holds |
//! | --- | --- |
//! | `rig` | the rig (devices, data model, checks after every step) and the set-ups |
//! | `preferred` | preferred location |
//! | `atomics` | the atomic access policy |
//! | `migration` | the migration policy, the size threshold, "migrate once" |
//! | `attr_changes` | attribute changes over bound ranges, ranges stop at attribute edges |
//! | `prefetch` | prefetch |
//! | `bad_input` | bad input changes nothing |

mod rig;

mod atomics;
mod attr_changes;
mod bad_input;
mod migration;
mod preferred;
mod prefetch;
