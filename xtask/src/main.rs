//! `cargo xtask`: hvkit's task runner.
//!
//! - `cargo xtask test`: everything CI checks (formatting, clippy, host tests, `no_std` builds,
//!   MSRV, docs, packaging, the emulator scenario suite, fuzz smoke runs).
//! - `cargo xtask run`: build the example hypervisor and boot it (see `--help`).
//! - `cargo xtask fuzz`: run the fuzz targets (nightly, cargo-fuzz).
//! - `cargo xtask bench`: instruction counts of the exit paths in Bochs, against budgets.
//! - `cargo xtask mutants`: mutation testing of the decision modules (cargo-mutants).

mod bench;
mod check;
mod consumer;
mod emu;
mod fuzz;
mod mutants;
mod report;
mod util;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <command> [options]

commands:
  test    run every check CI runs (fmt, clippy, tests, no_std builds, MSRV, docs, package,
          emulator scenarios, fuzz smoke)
          --no-emulators   skip the Bochs/QEMU scenario runs
          --no-fuzz        skip the fuzz build and smoke runs
  run     build the example hypervisor and boot it (qemu-kvm when nested VMX is
          available, else Bochs); `cargo xtask run --help` for options
  fuzz    cargo xtask fuzz [--seconds N] [TARGET]: run cargo-fuzz targets (nightly;
          installs cargo-fuzz when missing); --smoke: only the smoke step of `test`
  bench   boot the example in Bochs (clock sync=none: 1 TSC tick = 1 instruction) and print
          the exit-path instruction counts against goals, budgets and KVM; fails above a
          committed budget; `cargo xtask bench --help` for options
  mutants cargo xtask mutants [--file PATTERN] [--jobs N]: cargo-mutants over the decision
          modules; fails on a missed mutant not documented in mutants-survivors.md (not part
          of `test`; installs cargo-mutants when missing)
  package cargo package of the four libraries, then a user's crate (xtask/consumer) built
          and tested against the unpacked packages
  help    print this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match command {
        "test" => check::test(rest),
        "run" => emu::run_command(rest),
        "fuzz" => fuzz::command(rest),
        "bench" => bench::command(rest),
        "mutants" => mutants::command(rest),
        "package" => check::package(),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => util::fail(format!("unknown command `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(util::Failure(message)) => {
            eprintln!("\nxtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}
