//! `cargo xtask fuzz` and the fuzz step of `cargo xtask test`.

use crate::util::{self, Failure, Result, cargo, cargo_with, fail, note, root, run, step};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Installs what the fuzz steps need: the nightly toolchain and cargo-fuzz.
pub fn prerequisites() -> Result {
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

/// Compare tracing (`-sanitizer-coverage-trace-compares`) off. With it, every integer compare
/// in the code under test and in the harness's model calls into libFuzzer (two thirds of the
/// instructions of an `exit_sequence` execution); its payoff, mutations that copy compare
/// operands into the input, matters for inputs compared whole against magic values, which
/// these targets do not have: they decode bit fields and small choices. Measured in the same
/// code from the earlier seeds, runs without it reached within four edges of runs with it in
/// 5 s and within one in 20 s (`entry_check` and `event_model` found their last edges later);
/// the committed seeds include inputs for those edges, so every target starts at the edge
/// coverage of a 40-second run either way (fuzz/README.md).
const NO_TRACE_COMPARES: bool = true;

/// The target triple of the fuzz binaries (cargo-fuzz's default on x86-64 Linux, named so that
/// the smoke runs find the binaries).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// `cargo +nightly fuzz <subcommand>` with the build options every build and run shares, so
/// that `cargo xtask fuzz` and the smoke runs use the same binaries.
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut command = cargo_with("nightly");
    command
        .args(["fuzz", subcommand, "--sanitizer", SANITIZER, "--target", TRIPLE])
        .env_remove("CARGO_TARGET_DIR");
    if NO_TRACE_COMPARES {
        command.arg("--no-trace-compares");
    }
    command
}

fn corpus_dirs(target: &str) -> Result<(PathBuf, PathBuf)> {
    let corpus = root().join("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus)
        .map_err(|e| Failure(format!("creating {}: {e}", corpus.display())))?;
    Ok((corpus, root().join("fuzz/seeds").join(target)))
}

fn fuzz_run(target: &str, seconds: u64) -> Result {
    let (corpus, seeds) = corpus_dirs(target)?;
    let mut command = cargo_fuzz("run");
    command
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1");
    run(&mut command)
}

/// One smoke run: the binary `cargo fuzz build` left, started directly (what `cargo fuzz run`
/// starts, without its second cargo invocation per target), with the same corpus, seeds and
/// artifact directory.
fn smoke_command(target: &str, seconds: u64) -> Result<Command> {
    let (corpus, seeds) = corpus_dirs(target)?;
    let artifacts = root().join("fuzz/artifacts").join(target);
    fs::create_dir_all(&artifacts)
        .map_err(|e| Failure(format!("creating {}: {e}", artifacts.display())))?;
    let binary = root().join("fuzz/target").join(TRIPLE).join("release").join(target);
    let mut command = Command::new(binary);
    command
        .current_dir(root().join("fuzz"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg(&corpus)
        .arg(&seeds);
    Ok(command)
}

/// The libFuzzer lines worth keeping from a run's log: the last coverage report, the final
/// statistics and crash reports.
fn summary_lines(log: &str) -> Vec<&str> {
    let last_coverage =
        log.lines().rev().find(|line| line.starts_with('#') && line.contains("cov: "));
    last_coverage
        .into_iter()
        .chain(log.lines().filter(|line| {
            line.starts_with("stat::number_of_executed_units")
                || line.starts_with("stat::average_exec_per_sec")
                || line.starts_with("Done ")
                || line.contains("ERROR")
                || line.contains("panicked")
        }))
        .collect()
}

/// A smoke run in progress.
struct Running {
    target: &'static str,
    log: PathBuf,
    child: Child,
}

/// The order in which the runs start: longest first, so that `jobs` workers finish together.
fn schedule(plan: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    let mut order = plan.to_vec();
    order.sort_by_key(|&(_, seconds)| std::cmp::Reverse(seconds));
    order
}

/// Runs the plan `jobs` at a time (a new run starts as soon as one ends), each logging to
/// target/fuzz-smoke/TARGET.log; prints each target's coverage and statistics and fails if
/// any run failed.
fn run_parallel(plan: &[(&'static str, u64)], jobs: usize) -> Result {
    let logs = root().join("target/fuzz-smoke");
    fs::create_dir_all(&logs).map_err(|e| Failure(format!("creating {}: {e}", logs.display())))?;
    let mut waiting = schedule(plan).into_iter();
    let mut running: Vec<Running> = Vec::new();
    let mut failures = Vec::new();
    loop {
        while running.len() < jobs.max(1) {
            let Some((target, seconds)) = waiting.next() else { break };
            let log_path = logs.join(format!("{target}.log"));
            let log = fs::File::create(&log_path)
                .map_err(|e| Failure(format!("creating {}: {e}", log_path.display())))?;
            let err = log.try_clone().map_err(|e| Failure(format!("log file: {e}")))?;
            let child = smoke_command(target, seconds)?
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| Failure(format!("starting the {target} fuzz binary: {e}")))?;
            running.push(Running { target, log: log_path, child });
        }
        if running.is_empty() {
            break;
        }
        let mut finished = None;
        for (at, run) in running.iter_mut().enumerate() {
            let status = run
                .child
                .try_wait()
                .map_err(|e| Failure(format!("waiting for {}: {e}", run.target)))?;
            if let Some(status) = status {
                finished = Some((at, status));
                break;
            }
        }
        let Some((at, status)) = finished else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let run = running.swap_remove(at);
        let log = fs::read_to_string(&run.log).unwrap_or_default();
        println!("    {}: {}", run.target, if status.success() { "ok" } else { "FAILED" });
        for line in summary_lines(&log) {
            println!("      {line}");
        }
        if !status.success() {
            failures.push(format!("{} (log: {})", run.target, run.log.display()));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        fail(format!("fuzz smoke failed: {}", failures.join(", ")))
    }
}

/// Seconds each target runs in the smoke step of `cargo xtask test` (HVKIT_FUZZ_SECONDS sets
/// one value for all). From the committed seeds every target reaches, within its first
/// 0.3 s, all the edges that a 40-second run reaches (measured; fuzz/README.md); the seconds
/// go to new inputs, most to the two sequence targets whose executions cost the most.
pub const SMOKE_PLAN: &[(&str, u64)] = &[
    ("exit_decode", 2),
    ("exit_handling", 5),
    ("entry_check", 2),
    ("apic_ipi", 2),
    ("fred_frame", 2),
    ("exit_sequence", 6),
    ("event_model", 2),
];

/// HVKIT_FUZZ_SECONDS: one number of seconds for every smoke run instead of the plan.
pub fn smoke_seconds_override() -> Option<u64> {
    std::env::var("HVKIT_FUZZ_SECONDS").ok().and_then(|value| value.parse().ok())
}

/// The smoke plan, every target at `seconds` when given.
pub fn smoke_plan(seconds: Option<u64>) -> Vec<(&'static str, u64)> {
    SMOKE_PLAN.iter().map(|&(target, planned)| (target, seconds.unwrap_or(planned))).collect()
}

/// `cargo fuzz build` of every target, running in the background: started when a phase leaves
/// cores idle (the emulator suite runs one single-threaded emulator at a time), waited for by
/// the smoke step. Dropped unfinished (a phase failed), it is stopped.
pub struct Build {
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

/// Starts the nightly `cargo fuzz build` in the background at a lower priority (`nice -n 10`:
/// it takes the cores the foreground phase leaves idle and yields the others), logging to
/// target/fuzz-smoke/build.log.
pub fn start_build() -> Result<Build> {
    let logs = root().join("target/fuzz-smoke");
    fs::create_dir_all(&logs).map_err(|e| Failure(format!("creating {}: {e}", logs.display())))?;
    let log_path = logs.join("build.log");
    let build = cargo_fuzz("build");
    let mut command =
        if util::probe(Command::new("nice").arg("true")) { niced(&build) } else { build };
    let log = fs::File::create(&log_path)
        .map_err(|e| Failure(format!("creating {}: {e}", log_path.display())))?;
    let err = log.try_clone().map_err(|e| Failure(format!("log file: {e}")))?;
    command.stdin(Stdio::null()).stdout(log).stderr(err);
    // Its own process group, so that stopping it stops cargo and rustc too.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    println!("    $ {} (in the background; log: {})", util::render(&command), log_path.display());
    let child = command.spawn().map_err(|e| Failure(format!("starting cargo fuzz build: {e}")))?;
    Ok(Build { child: Some(child), log: log_path, started: Instant::now() })
}

/// `command` under `nice -n 10`, with the same arguments, directory and environment.
fn niced(command: &Command) -> Command {
    let mut niced = Command::new("nice");
    niced.args(["-n", "10"]).arg(command.get_program()).args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        niced.current_dir(dir);
    }
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => niced.env(key, value),
            None => niced.env_remove(key),
        };
    }
    niced
}

impl Build {
    /// Waits for the build; returns how long it ran.
    fn finish(mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            return fail("fuzz build already waited for");
        };
        let status =
            child.wait().map_err(|e| Failure(format!("waiting for cargo fuzz build: {e}")))?;
        let elapsed = self.started.elapsed();
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() {
            let lines: Vec<&str> = log.lines().collect();
            for line in lines.iter().skip(lines.len().saturating_sub(40)) {
                println!("      {line}");
            }
            return fail(format!("cargo fuzz build failed (log: {})", self.log.display()));
        }
        if let Some(line) = log.lines().rev().find(|line| line.trim_start().starts_with("Finished"))
        {
            println!("      {}", line.trim());
        }
        Ok(elapsed)
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Stop the whole group (rustup, cargo, rustc, cc), then reap the child.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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

/// Waits for `build`, then runs every target for its planned seconds (`seconds` for all when
/// given), without a sanitizer, as many at a time as there are cores. Returns how long the
/// build ran (in the background, from its start).
pub fn smoke_step(seconds: Option<u64>, build: Build) -> Result<Duration> {
    let plan = smoke_plan(seconds);
    let total: u64 = plan.iter().map(|(_, seconds)| seconds).sum();
    step(&format!(
        "fuzz smoke: cargo-fuzz on nightly, sanitizer {SANITIZER}, {total} target-seconds \
         ({})",
        plan.iter()
            .map(|(target, seconds)| format!("{target} {seconds} s"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let waiting = Instant::now();
    let build_time = build.finish()?;
    note(&format!(
        "cargo fuzz build: {:.1} s in the background, of which this step waited {:.1} s",
        build_time.as_secs_f64(),
        waiting.elapsed().as_secs_f64()
    ));
    // One run per core at a time: the targets are independent single-threaded processes.
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    note(&format!("{} targets, {jobs} at a time, longest first", plan.len()));
    run_parallel(&plan, jobs)?;
    Ok(build_time)
}

/// `cargo xtask fuzz [--seconds N] [--smoke] [TARGET]`.
pub fn command(args: &[String]) -> Result {
    if args.iter().any(|arg| arg == "--smoke") {
        // The smoke step of `cargo xtask test`, with the build in the foreground.
        let start = Instant::now();
        prerequisites()?;
        smoke_step(smoke_seconds_override(), start_build()?)?;
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
    fn summary_keeps_the_last_coverage_statistics_and_failures_only() {
        let log = "INFO: Seed: 1\n#512 pulse cov: 9 ft: 9\n#1024 NEW cov: 10 ft: 12\n\
                   Done 2688153 runs in 7 second(s)\n\
                   stat::number_of_executed_units: 2688153\nstat::average_exec_per_sec: 384021\n\
                   stat::new_units_added: 3\n==1== ERROR: libFuzzer: deadly signal\n\
                   thread '<unnamed>' panicked at src/lib.rs:1:1\n";
        assert_eq!(
            summary_lines(log),
            [
                "#1024 NEW cov: 10 ft: 12",
                "Done 2688153 runs in 7 second(s)",
                "stat::number_of_executed_units: 2688153",
                "stat::average_exec_per_sec: 384021",
                "==1== ERROR: libFuzzer: deadly signal",
                "thread '<unnamed>' panicked at src/lib.rs:1:1",
            ]
        );
    }

    #[test]
    fn smoke_plan_covers_every_target_and_the_override_applies_to_all() {
        let planned: Vec<&str> = SMOKE_PLAN.iter().map(|(target, _)| *target).collect();
        assert_eq!(planned, TARGETS);
        assert!(SMOKE_PLAN.iter().all(|&(_, seconds)| seconds > 0));
        assert!(smoke_plan(Some(3)).iter().all(|&(_, seconds)| seconds == 3));
        assert_eq!(smoke_plan(None), SMOKE_PLAN);
    }

    #[test]
    fn runs_start_longest_first() {
        let order = schedule(&[("a", 2), ("b", 8), ("c", 5), ("d", 2)]);
        assert_eq!(order, [("b", 8), ("c", 5), ("a", 2), ("d", 2)]);
    }

    #[test]
    fn niced_command_keeps_arguments_directory_and_environment() {
        let mut command = Command::new("rustup");
        command.args(["run", "nightly"]).current_dir("/tmp").env("A", "1").env_remove("B");
        let niced = niced(&command);
        assert_eq!(niced.get_program(), "nice");
        let args: Vec<_> = niced.get_args().collect();
        assert_eq!(args, ["-n", "10", "rustup", "run", "nightly"]);
        assert_eq!(niced.get_current_dir(), Some(std::path::Path::new("/tmp")));
        let envs: Vec<_> = niced.get_envs().collect();
        assert!(envs.contains(&(std::ffi::OsStr::new("A"), Some(std::ffi::OsStr::new("1")))));
        assert!(envs.contains(&(std::ffi::OsStr::new("B"), None)));
    }
}
