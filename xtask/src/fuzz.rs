//! `cargo xtask fuzz` and the fuzz step of `cargo xtask test`.

use crate::util::{self, Failure, Result, cargo, cargo_with, fail, note, root, run, step};
use std::fs;

/// The fuzz targets (fuzz/fuzz_targets/*.rs).
pub const TARGETS: &[&str] =
    &["exit_decode", "exit_handling", "entry_check", "apic_ipi", "fred_frame"];

fn prerequisites() -> Result {
    util::ensure_toolchain("nightly", &[])?;
    if !util::probe(cargo_with("nightly").args(["fuzz", "--version"])) {
        note("installing cargo-fuzz (missing)");
        let mut install = cargo();
        install.args(["install", "--locked", "cargo-fuzz"]);
        run(&mut install).or_else(|_| {
            fail("could not install cargo-fuzz; run: cargo install --locked cargo-fuzz")
        })?;
    }
    Ok(())
}

/// The sanitizer every build and run uses: none. The code under test is safe Rust (the fuzzed
/// crates forbid `unsafe` in the logic the targets reach), so AddressSanitizer finds nothing
/// there and costs most of the executions; libFuzzer's coverage guidance stays on.
const SANITIZER: &str = "none";

fn fuzz_run(target: &str, seconds: u64) -> Result {
    let corpus = root().join("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus)
        .map_err(|e| Failure(format!("creating {}: {e}", corpus.display())))?;
    let seeds = root().join("fuzz/seeds").join(target);
    let mut command = cargo_with("nightly");
    command
        .args(["fuzz", "run", "--sanitizer", SANITIZER, target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1");
    run(&mut command)
}

/// Default seconds per target of the smoke run in `cargo xtask test` (HVKIT_FUZZ_SECONDS
/// overrides): without the sanitizer each target makes several times the executions ASan
/// allowed in 30 s.
pub const SMOKE_SECONDS: u64 = 6;

/// Replays the seeds on stable (fmt, clippy and the harness tests of the fuzz workspace).
pub fn replay_step() -> Result {
    step("fuzz targets: seed corpus replayed on stable (plus 20k pseudo-random inputs)");
    let fuzz = root().join("fuzz");
    run(cargo().current_dir(&fuzz).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(&fuzz).args([
        "clippy",
        "-p",
        "hvkit-fuzz-harness",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().current_dir(&fuzz).args(["test", "-p", "hvkit-fuzz-harness"]))
}

/// Builds every target and runs each for `smoke_seconds` on nightly, without a sanitizer.
pub fn smoke_step(smoke_seconds: u64) -> Result {
    step(&format!(
        "fuzz smoke: cargo-fuzz on nightly, sanitizer {SANITIZER}, {smoke_seconds} s per target"
    ));
    prerequisites()?;
    run(cargo_with("nightly").args(["fuzz", "build", "--sanitizer", SANITIZER]))?;
    for target in TARGETS {
        fuzz_run(target, smoke_seconds)?;
    }
    Ok(())
}

/// `cargo xtask fuzz [--seconds N] [TARGET]`.
pub fn command(args: &[String]) -> Result {
    let mut seconds = 60u64;
    let mut targets: Vec<String> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = iter
                    .next()
                    .and_then(|value| value.parse().ok())
                    .ok_or_else(|| Failure("--seconds takes a number".into()))?;
            }
            name if TARGETS.contains(&name) => targets.push(name.to_string()),
            other => {
                return fail(format!(
                    "unknown fuzz target or option `{other}` (targets: {})",
                    TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    prerequisites()?;
    for target in &targets {
        step(&format!("fuzzing {target} for {seconds} s"));
        fuzz_run(target, seconds)?;
    }
    Ok(())
}
