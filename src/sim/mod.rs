//! A deterministic simulated platform (feature `sim`): a CPU address space with VMAs and real
//! page contents, devices with their own page tables, an IOMMU that records every mapping,
//! fault injection, and an invariant checker. Driver authors reuse it to test their integration.

pub mod harness;
