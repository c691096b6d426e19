//! The conformance suite: named scenarios modelled on the behaviours exercised by two public
//! test suites of shared virtual memory, run against this crate on the simulator.
//!
//! - The Linux HMM selftests (`tools/testing/selftests/mm/hmm-tests.c`): a test driver
//!   (`dmirror`) mirrors a process's anonymous memory into a fake device, migrates it to
//!   device-private memory and back, and checks data, protections, fork/COW, huge pages and
//!   device-exclusive (atomic) access.
//! - The Intel Xe system-allocator IGT tests (`tests/intel/xe_exec_system_allocator.c`): a GPU
//!   executes on plain `malloc`/`mmap`/`new` memory; sections free the memory while it is
//!   bound, unmap part of it, race threads, fork, evict under memory pressure, apply madvise
//!   attributes (preferred location, atomics, migration policy), prefetch, use many ranges and
//!   several GPUs.
//!
//! Each scenario is a `#[test]` whose doc comment names the public test it reproduces and the
//! behaviour it checks; the code is written for this crate (nothing is copied). Every scenario
//! runs [`harness::Machine::check`] after every step (invariant checker over every device and
//! address space, DMA / device-memory / RAM accounting, data model compared with memory), checks
//! every CPU and device read against the data model, and asserts behaviour beyond "no error":
//! values, where pages live, counters, DMA and device-memory accounting.
//!
//! | module | theme |
//! | --- | --- |
//! | [`memory`] | malloc / mmap / new memory, protections, free while bound, remap, teardown |
//! | [`migrate`] | explicit migration to device memory and back, mixed residency |
//! | [`unmap`] | partial unmaps: front, middle, back, across ranges |
//! | [`races`] | racing threads: device faults vs munmap / mprotect / CPU writes, two devices |
//! | [`fork`] | fork and copy-on-write, in RAM and with device pages |
//! | [`evict`] | eviction under device-memory pressure, failures while evicting |
//! | [`madvise`] | preferred location (system, peer), atomics policy, migration policy, prefetch |
//! | [`atomics`] | device atomics (exclusive access), with mprotect and fork |
//! | [`huge`] | THP-backed memory: one copy run per 2 MiB, order-9 device pages |
//! | [`many`] | thousands of 4 KiB ranges, many small buffers, many devices |
//! | [`multi`] | 2–4 devices, linked and not, shared counters, teardown |
#![cfg(feature = "sim")]

mod harness;

mod atomics;
mod evict;
mod fork;
mod huge;
mod madvise;
mod many;
mod memory;
mod migrate;
mod multi;
mod races;
mod unmap;
