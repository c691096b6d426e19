//! The gpusvm firmware scenario: one deterministic run of the crate's public API over platform
//! facets built from static memory, shared by the Cortex-M4 and riscv32imac firmwares (under
//! QEMU) and by the x86_64 host binary. Each prints the checksum [`run`] returns; the three
//! must be equal.
//!
//! | facet | here |
//! | --- | --- |
//! | [`AddressSpace`](gpusvm::platform::AddressSpace) | [`mm::FwMm`]: VMAs in a 64-page window, a CPU page table, notifier slots, migration entries, CPU loads/stores |
//! | [`DmaMapper`](gpusvm::platform::DmaMapper) | [`dma::IdentityDma`]: bus address = physical address, counts live mappings |
//! | [`DevicePageTable`](gpusvm::platform::DevicePageTable) | [`devpt::DevPt`]: one entry per page, `zap`, the device's loads/stores |
//! | [`DeviceMemory`](gpusvm::platform::DeviceMemory) | [`devmem::FwVram`]: 32 pages of static RAM, allocator, copy engine |
//! | clock | [`phys::Phys::now_ns`]: +1 µs per read |
//!
//! The crate allocates from a static pool through its host facet ([`platform::FwHost`]); the
//! scenario's own bookkeeping (`Rc`) uses `alloc`, so the binary that links this library
//! provides a `#[global_allocator]`.
//!
//! Everything the checksum covers is computed with `u64` arithmetic over fixed frame numbers
//! and addresses, so it does not depend on the pointer width or on where the linker put the
//! static arrays.
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::undocumented_unsafe_blocks
)]

extern crate alloc;

pub mod checksum;
pub mod devmem;
pub mod devpt;
pub mod dma;
pub mod mm;
pub mod phys;
pub mod platform;
pub mod rig;
pub mod scenario;

pub use scenario::{run, Failure};

use core::fmt::Write;

/// What every host prints: a header naming `host`, the steps of [`run`], then
/// `gpusvm firmware: checksum 0x…` or `gpusvm firmware: FAILED: …`. Returns the outcome, so
/// the host turns it into its exit status. Output errors are ignored (a host without a console
/// still runs the scenario).
pub fn report(out: &mut dyn Write, host: &str) -> Result<u64, Failure> {
    let _ = writeln!(out, "gpusvm firmware: {host}");
    let r = run(out);
    match &r {
        Ok(sum) => {
            let _ = writeln!(out, "gpusvm firmware: checksum {sum:#018x}");
        }
        Err(f) => {
            let _ = writeln!(out);
            let _ = writeln!(out, "gpusvm firmware: FAILED: {f}");
        }
    }
    r
}

/// An optional output stream as a `fmt::Write` (semihosting output may be missing: then the
/// text is dropped).
pub struct Console<W>(pub Option<W>);

impl<W: Write> Write for Console<W> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        match &mut self.0 {
            Some(out) => out.write_str(s),
            None => Ok(()),
        }
    }
}
