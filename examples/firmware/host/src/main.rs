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
    println!("gpusvm firmware: x86_64 host");
    match gpusvm_fw_scenario::run(&mut Stdout) {
        Ok(sum) => {
            println!("gpusvm firmware: checksum {sum:#018x}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            println!();
            println!("gpusvm firmware: FAILED: {f}");
            ExitCode::from(u8::try_from(f.step).unwrap_or(u8::MAX))
        }
    }
}
