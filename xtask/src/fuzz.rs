//! `cargo xtask fuzz` and the fuzz step of `cargo xtask test`.

use crate::util::{self, Failure, Result, cargo, cargo_with, fail, note, root, run, step};
use std::fs;
use std::process::{Command, Stdio};

/// The fuzz targets (fuzz/fuzz_targets/*.rs).
pub const TARGETS: &[&str] = &[
    "exit_decode",
    "exit_handling",
    "entry_check",
    "apic_ipi",
    "fred_frame",
    "exit_sequence",
    "event_model",
];

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

fn fuzz_command(target: &str, seconds: u64) -> Result<Command> {
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
    Ok(command)
}

fn fuzz_run(target: &str, seconds: u64) -> Result {
    run(&mut fuzz_command(target, seconds)?)
}

/// The libFuzzer lines worth keeping from a run's log (final statistics, crash reports).
fn summary_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            line.starts_with("stat::number_of_executed_units")
                || line.starts_with("stat::average_exec_per_sec")
                || line.starts_with("Done ")
                || line.contains("ERROR")
                || line.contains("panicked")
        })
        .collect()
}

/// Runs the targets `jobs` at a time, each logging to target/fuzz-smoke/TARGET.log; prints each
/// target's final statistics and fails if any run failed.
fn run_parallel(targets: &[&str], seconds: u64, jobs: usize) -> Result {
    let logs = root().join("target/fuzz-smoke");
    fs::create_dir_all(&logs).map_err(|e| Failure(format!("creating {}: {e}", logs.display())))?;
    let mut failures = Vec::new();
    for batch in targets.chunks(jobs.max(1)) {
        let mut children = Vec::new();
        for target in batch {
            let log_path = logs.join(format!("{target}.log"));
            let log = fs::File::create(&log_path)
                .map_err(|e| Failure(format!("creating {}: {e}", log_path.display())))?;
            let err = log.try_clone().map_err(|e| Failure(format!("log file: {e}")))?;
            let child = fuzz_command(target, seconds)?
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| Failure(format!("starting cargo fuzz run {target}: {e}")))?;
            children.push((target, log_path, child));
        }
        for (target, log_path, mut child) in children {
            let status = child.wait().map_err(|e| Failure(format!("waiting for {target}: {e}")))?;
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            println!("    {target}: {}", if status.success() { "ok" } else { "FAILED" });
            for line in summary_lines(&log) {
                println!("      {line}");
            }
            if !status.success() {
                failures.push(format!("{target} (log: {})", log_path.display()));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        fail(format!("fuzz smoke failed: {}", failures.join(", ")))
    }
}

/// Default seconds per target of the smoke run in `cargo xtask test` (HVKIT_FUZZ_SECONDS
/// overrides); the targets run in parallel, one per core.
pub const SMOKE_SECONDS: u64 = 5;

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

/// Builds every target and runs each for `smoke_seconds` on nightly, without a sanitizer, as
/// many at a time as there are cores.
pub fn smoke_step(smoke_seconds: u64) -> Result {
    step(&format!(
        "fuzz smoke: cargo-fuzz on nightly, sanitizer {SANITIZER}, {smoke_seconds} s per target"
    ));
    prerequisites()?;
    run(cargo_with("nightly").args(["fuzz", "build", "--sanitizer", SANITIZER]))?;
    // One run per core at a time: the targets are independent single-threaded processes.
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    note(&format!("{} targets, {jobs} at a time", TARGETS.len()));
    run_parallel(TARGETS, smoke_seconds, jobs)
}

/// `cargo xtask fuzz [--seconds N] [--smoke] [TARGET]`.
pub fn command(args: &[String]) -> Result {
    if args.iter().any(|arg| arg == "--smoke") {
        // Exactly the smoke step of `cargo xtask test`.
        let start = std::time::Instant::now();
        smoke_step(SMOKE_SECONDS)?;
        note(&format!("fuzz smoke took {:.1} s", start.elapsed().as_secs_f64()));
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_keeps_statistics_and_failures_only() {
        let log = "INFO: Seed: 1\n#1024 pulse cov: 10\nDone 2688153 runs in 7 second(s)\n\
                   stat::number_of_executed_units: 2688153\nstat::average_exec_per_sec: 384021\n\
                   stat::new_units_added: 3\n==1== ERROR: libFuzzer: deadly signal\n\
                   thread '<unnamed>' panicked at src/lib.rs:1:1\n";
        assert_eq!(
            summary_lines(log),
            [
                "Done 2688153 runs in 7 second(s)",
                "stat::number_of_executed_units: 2688153",
                "stat::average_exec_per_sec: 384021",
                "==1== ERROR: libFuzzer: deadly signal",
                "thread '<unnamed>' panicked at src/lib.rs:1:1",
            ]
        );
    }
}
