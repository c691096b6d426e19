//! Many devices on one simulated machine (issue 5; SPEC §3 peer pages, §6 owners and
//! interconnect, §7 device → device migration).
//!
//! Every scenario runs on [`Machine`]: one [`SimWorld`], one address space, any number of
//! [`SimGpu`]s that joined the machine's owner registry. After **every** step (each CPU or
//! device access, each migration call, each join and teardown) [`Machine::check`] runs
//! - the simulator's invariant checker over **all** live devices (ranges, device PTEs, DMA and
//!   P2P mappings reaching the frame the CPU maps, device-memory accounting per pagemap);
//! - a data model (`address -> last value written`, DESIGN invariant 4) compared, without
//!   changing any state, against the frame the CPU page table maps — system RAM or the device
//!   memory of the pagemap the CPU entry names;
//! - registry coherence: each device's `Svm` owner and pagemap owner are what
//!   [`SimWorld::owners`] says, and every device page the CPU maps carries its pagemap's owner;
//! - P2P hygiene: every peer DMA mapping of a live device points at the memory of another live
//!   device it has a link to, and the IOMMU counts agree with the live mappings;
//! - for torn-down devices: closed (no DMA mapping, no PTE, no range), no device memory in use,
//!   out of the registry, detached from every survivor, no CPU page left in their memory.
//!
//! Reads (CPU and device) are also compared with the model at the moment they return.
//!
//! | module | holds |
//! | --- | --- |
//! | `machine` | the harness: [`Machine`](machine::Machine) and its checks |
//! | `owners` | two devices with one owner or two, a third device joins and leaves |
//! | `peer_faults` | device A faults on pages resident in B's memory |
//! | `teardown` | teardown while peers use the pages; owner ids |
//! | `migrate_rules` | `populate` / `migrate_to_devmem` refusals, `can_migrate_same_pagemap`, failures restore |
//! | `interactions` | mixed pagemaps, eviction and munmap under peer mappings, late joiners |
//! | `stress` | the random walk and the threaded runs |
#![cfg(feature = "sim")]

mod machine;

mod interactions;
mod migrate_rules;
mod owners;
mod peer_faults;
mod stress;
mod teardown;
