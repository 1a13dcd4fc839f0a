//! `cargo xtask test`: the checks CI runs, in order, each announced.

use crate::util::{self, Result, cargo, cargo_with, fail, run, step};
use std::time::{Duration, Instant};

/// The time of each phase of `cargo xtask test`, printed as each ends and as a table at the end.
/// The phases run one after the other, so their sum is the wall time of the whole test; work
/// that ran in the background during them is listed apart and not added to it.
#[derive(Default)]
pub struct Phases {
    done: Vec<(String, Duration)>,
    current: Option<(String, Instant)>,
    background: Vec<(String, Duration)>,
}

impl Phases {
    /// Ends the running phase (printing its time) and starts `name` with a step banner.
    pub fn begin(&mut self, name: &str) {
        self.end();
        step(name);
        self.current = Some((name.to_string(), Instant::now()));
    }

    /// Ends the running phase, if any.
    pub fn end(&mut self) {
        if let Some((name, started)) = self.current.take() {
            let elapsed = started.elapsed();
            println!("    phase time: {:.1} s", elapsed.as_secs_f64());
            self.done.push((name, elapsed));
        }
    }

    /// Records work that ran in the background, overlapping the phases.
    pub fn background(&mut self, name: &str, elapsed: Duration) {
        self.background.push((name.to_string(), elapsed));
    }

    /// The summary table: phase, seconds, share of the total (the wall time); then the
    /// background work, whose time is already inside the phases it overlapped.
    pub fn summary(&self) -> String {
        let total: f64 = self.done.iter().map(|(_, d)| d.as_secs_f64()).sum();
        let mut out = format!("{:<78} {:>8} {:>6}\n", "phase", "seconds", "share");
        for (name, elapsed) in &self.done {
            let seconds = elapsed.as_secs_f64();
            let share = if total > 0.0 { 100.0 * seconds / total } else { 0.0 };
            let name: String = name.chars().take(78).collect();
            out.push_str(&format!("{name:<78} {seconds:>8.1} {share:>5.0}%\n"));
        }
        out.push_str(&format!("{:<78} {total:>8.1} {:>5}%\n", "total (wall time)", 100));
        if !self.background.is_empty() {
            out.push_str(
                "in the background, overlapping the phases above (not added to the total):\n",
            );
            for (name, elapsed) in &self.background {
                let name: String = name.chars().take(78).collect();
                out.push_str(&format!("{name:<78} {:>8.1}\n", elapsed.as_secs_f64()));
            }
        }
        out
    }
}

/// The published library crates.
pub const LIBRARIES: &[&str] =
    &["hvkit-vmx-core", "hvkit-apic", "hvkit-fred", "hvkit-nmi-reinject"];
/// The bare-metal target every library must build for.
pub const BARE_TARGET: &str = "x86_64-unknown-none";
/// The minimum supported Rust version (workspace `rust-version`), checked by building with it.
pub const MSRV: &str = "1.88";

struct Options {
    emulators: bool,
    fuzz: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options { emulators: true, fuzz: true };
    for arg in args {
        match arg.as_str() {
            "--no-emulators" => options.emulators = false,
            "--no-fuzz" => options.fuzz = false,
            other => return fail(format!("`cargo xtask test`: unknown option `{other}`")),
        }
    }
    Ok(options)
}

fn package_args(command: &mut std::process::Command) {
    for library in LIBRARIES {
        command.args(["-p", library]);
    }
}

pub fn test(args: &[String]) -> Result {
    let options = parse(args)?;
    let started = Instant::now();
    let mut phases = Phases::default();
    let result = run_phases(&options, &mut phases);
    phases.end();
    println!("\nxtask test: time per phase\n{}", phases.summary());
    result?;
    println!("\nxtask test: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

fn run_phases(options: &Options, phases: &mut Phases) -> Result {
    phases.begin(if options.fuzz {
        "prerequisites: rustfmt, clippy, the x86_64-unknown-none target, the MSRV toolchain, \
         nightly and cargo-fuzz"
    } else {
        "prerequisites: rustfmt, clippy, the x86_64-unknown-none target, the MSRV toolchain"
    });
    util::ensure_toolchain("stable", &["rustfmt", "clippy"])?;
    util::ensure_rust_target(None, BARE_TARGET)?;
    util::ensure_toolchain(MSRV, &[])?;
    util::ensure_rust_target(Some(MSRV), BARE_TARGET)?;
    if options.fuzz {
        crate::fuzz::prerequisites()?;
    }

    phases.begin("formatting (cargo fmt --check)");
    run(cargo().args(["fmt", "--all", "--check"]))?;

    phases.begin("clippy, all targets, every feature, warnings denied");
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;

    phases.begin("host unit tests");
    run(cargo().args(["test", "--workspace"]))?;

    // The nightly fuzz build runs in the background from here on, at a lower priority: the
    // phases below are mostly single-threaded (the emulators run one at a time) and leave a
    // core idle. Its time shows in the phases it overlaps; the smoke phase waits for whatever
    // is left of it.
    let mut fuzz_build =
        if options.fuzz && options.emulators { Some(crate::fuzz::start_build()?) } else { None };

    phases.begin("no_std build of every library for x86_64-unknown-none");
    let mut bare = cargo();
    bare.args(["build", "--target", BARE_TARGET]);
    package_args(&mut bare);
    run(&mut bare)?;
    let mut bare_release = cargo();
    bare_release.args(["build", "--release", "--all-features", "--target", BARE_TARGET]);
    package_args(&mut bare_release);
    run(&mut bare_release)?;

    phases.begin(&format!("MSRV: the libraries build with Rust {MSRV}"));
    let mut msrv = cargo_with(MSRV);
    msrv.args(["check", "--target", BARE_TARGET, "--target-dir", "target/msrv"]);
    package_args(&mut msrv);
    run(&mut msrv)?;

    phases.begin("documentation, warnings denied");
    run(cargo().env("RUSTDOCFLAGS", "-D warnings").args([
        "doc",
        "--workspace",
        "--no-deps",
        "--all-features",
    ]))?;
    run(cargo().env("RUSTDOCFLAGS", "-D warnings").args(["test", "--workspace", "--doc"]))?;

    phases.begin(
        "packaging: each library packages, its packaged copy builds, a user crate runs the exit sequence on the packages",
    );
    package()?;

    phases.begin("example hypervisor: formatting and clippy (x86_64-unknown-none)");
    let example = util::root().join("examples/hypervisor");
    run(cargo().current_dir(&example).args(["fmt", "--check"]))?;
    run(cargo()
        .current_dir(&example)
        .env("CARGO_TARGET_DIR", util::root().join("target/example"))
        .args(["clippy", "--release", "--target", BARE_TARGET, "--", "-D", "warnings"]))?;

    if options.emulators {
        phases.begin("emulator suite (Bochs models, QEMU TCG)");
        crate::emu::test_suite()?;
    }
    if options.fuzz {
        phases.begin("fuzz: seed replay on stable");
        let build = match fuzz_build.take() {
            Some(build) => build,
            None => crate::fuzz::start_build()?,
        };
        crate::fuzz::replay_step()?;
        phases.begin("fuzz: smoke (rest of the nightly cargo-fuzz build, then the runs)");
        let build_time = crate::fuzz::smoke_step(crate::fuzz::smoke_seconds_override(), build)?;
        phases.background("fuzz: nightly cargo-fuzz build (from the no_std phase on)", build_time);
    }
    Ok(())
}

/// `cargo xtask package`: packages the four libraries (cargo verifies that each packaged copy
/// builds against the others), then builds and tests a user's crate against the unpacked
/// packages.
pub fn package() -> Result {
    forget_packaged_sources()?;
    let mut package = cargo();
    package.args(["package", "--allow-dirty", "--target-dir", "target/package-build"]);
    package_args(&mut package);
    run(&mut package)?;
    crate::consumer::check(LIBRARIES, BARE_TARGET)
}

/// `cargo package` verifies each library against the others through a temporary local registry
/// under `target/package`. Cargo treats registry crates as immutable: it unpacks them under
/// `$CARGO_HOME/registry/src/-<hash of that path>/NAME-VERSION` and reuses both that copy and
/// their compiled artifacts as long as the version is the same. So a checkout whose API changed
/// without a version bump would be verified against an earlier run's build of its own crates.
/// Verification builds in its own target directory, removed first with the packages and the
/// unpacked copies (only hvkit's, only from such local registries).
fn forget_packaged_sources() -> Result {
    for stale in ["target/package", "target/package-build"] {
        let path = util::root().join(stale);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .or_else(|error| fail(format!("removing {}: {error}", path.display())))?;
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME").map(std::path::PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cargo"))
    });
    let Some(sources) = cargo_home.map(|home| home.join("registry/src")) else { return Ok(()) };
    let Ok(registries) = std::fs::read_dir(&sources) else { return Ok(()) };
    for registry in registries.flatten() {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        let Ok(crates) = std::fs::read_dir(registry.path()) else { continue };
        for unpacked in crates.flatten() {
            let name = unpacked.file_name().to_string_lossy().into_owned();
            if LIBRARIES.iter().any(|library| name.starts_with(&format!("{library}-"))) {
                std::fs::remove_dir_all(unpacked.path()).or_else(|error| {
                    fail(format!("removing {}: {error}", unpacked.path().display()))
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_summary_lists_each_phase_with_its_share_of_the_total() {
        let phases = Phases {
            done: vec![
                ("fmt".to_string(), Duration::from_secs(30)),
                ("fuzz smoke".to_string(), Duration::from_secs(10)),
            ],
            current: None,
            background: vec![("fuzz build".to_string(), Duration::from_secs(35))],
        };
        let text = phases.summary();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[1].starts_with("fmt") && lines[1].ends_with("30.0    75%"), "{text}");
        assert!(lines[2].starts_with("fuzz smoke") && lines[2].ends_with("10.0    25%"), "{text}");
        assert!(lines[3].starts_with("total") && lines[3].contains("40.0"), "{text}");
        // Background work is listed, but not added to the total or given a share.
        assert!(lines[4].starts_with("in the background"), "{text}");
        assert!(lines[5].starts_with("fuzz build") && lines[5].ends_with("35.0"), "{text}");
    }
}
