//! The firmware scenario on the build host (x86_64, std): the reference run. Prints the same
//! lines as the firmwares and exits 0 on success, else with the number of the failed step.

use std::fmt;
use std::process::ExitCode;

/// `core::fmt::Write` over standard output.
struct Stdout;

impl fmt::Write for Stdout {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print!("{s}");
        Ok(())
    }
}

fn main() -> ExitCode {
    match gpusvm_fw_scenario::report(&mut Stdout, "x86_64 host") {
        Ok(_) => ExitCode::SUCCESS,
        Err(f) => ExitCode::from(u8::try_from(f.step).unwrap_or(u8::MAX)),
    }
}
