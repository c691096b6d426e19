//! The gpusvm firmware scenario on a riscv32imac core (QEMU `virt`).
//!
//! Boots with riscv-rt, gives the crate a heap (embedded-alloc's linked-list allocator over
//! a static array: the scenario allocates and frees all the time), runs
//! [`gpusvm_fw_scenario::run`], prints each step and the checksum through semihosting, and exits
//! with `EXIT_SUCCESS` (QEMU exit status 0) or `EXIT_FAILURE` (status 1).
#![no_std]
#![no_main]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::undocumented_unsafe_blocks
)]

use core::fmt::Write;
use core::mem::MaybeUninit;
use embedded_alloc::LlffHeap as Heap;
use gpusvm_fw_scenario::Console;
// Links riscv's critical-section implementation (embedded-alloc takes it).
use riscv as _;
use riscv_rt::entry;
use riscv_semihosting::{debug, hio};

/// Size of the heap the crate allocates from.
const HEAP_SIZE: usize = 128 * 1024;

#[global_allocator]
static HEAP: Heap = Heap::empty();

/// Give the allocator its memory. Called once, first thing in `main`.
fn init_heap() {
    static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    // SAFETY: called once, before anything allocates; `HEAP_MEM` is used by nothing else
    // (only its address is taken, no reference is created), so the allocator owns it for the
    // rest of the program.
    unsafe { HEAP.init(&raw mut HEAP_MEM as usize, HEAP_SIZE) }
}

#[entry]
fn main() -> ! {
    init_heap();
    let mut out = Console(hio::hstdout().ok());
    let status = match gpusvm_fw_scenario::report(&mut out, "riscv32imac (virt)") {
        Ok(_) => debug::EXIT_SUCCESS,
        Err(_) => debug::EXIT_FAILURE,
    };
    debug::exit(status);
    loop {
        riscv::asm::wfi();
    }
}

/// A panic (none is expected: the scenario returns errors) ends the run with `EXIT_FAILURE`.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if let Ok(mut out) = hio::hstdout() {
        let _ = writeln!(out, "gpusvm firmware: PANIC: {info}");
    }
    debug::exit(debug::EXIT_FAILURE);
    loop {
        riscv::asm::wfi();
    }
}
