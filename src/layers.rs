//! The design, one page per layer: what each layer owns, what it may call, its locking and its
//! allocation, in the style of kernel-doc. The pages are `docs/layers/*.md` in the repository.
//!
//! ```text
//!   6  consumers        sim (feature sim) · testkit (feature testkit)
//!   5  Svm              svm/: the Svm, range index, bind, invalidation, fault service, GC
//!   4  decisions        policy (attributes, decide) · placement (the pagemap set)
//!   3  device memory    pagemap (Pagemap, owners) · migrate (state machines)
//!   2  per-range state  pages (collect, map, commit; Userptr) · range (Range, trees, chunks) · stats
//!   1  facets           heap (Allocator, Vec, Arc) · sync (locks, Host, SeqCounter) · platform
//!   0  vocabulary       error · types (ids, Access, Window, Event, PageEntry) · atomic
//! ```
//!
//! A module uses only modules of its own layer or below, and the module graph has no cycle;
//! `tests/house.rs` checks both on every `cargo test`, and that no source file of the
//! repository exceeds 800 lines.

#[doc = include_str!("../docs/layers/0-vocabulary.md")]
pub mod vocabulary {}
#[doc = include_str!("../docs/layers/1-facets.md")]
pub mod facets {}
#[doc = include_str!("../docs/layers/2-range-pages.md")]
pub mod range_and_pages {}
#[doc = include_str!("../docs/layers/3-pagemap-migrate.md")]
pub mod pagemap_and_migrate {}
#[doc = include_str!("../docs/layers/4-policy-placement.md")]
pub mod policy_and_placement {}
#[doc = include_str!("../docs/layers/5-svm.md")]
pub mod svm {}
#[doc = include_str!("../docs/layers/6-consumers.md")]
pub mod consumers {}
