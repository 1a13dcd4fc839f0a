//! `cargo xtask test`: the checks CI runs, in order, each announced.

use crate::util::{self, Result, cargo, cargo_with, fail, run, step};
use std::time::Instant;

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

    step("prerequisites: rustfmt, clippy, the x86_64-unknown-none target, the MSRV toolchain");
    util::ensure_toolchain("stable", &["rustfmt", "clippy"])?;
    util::ensure_rust_target(None, BARE_TARGET)?;
    util::ensure_toolchain(MSRV, &[])?;
    util::ensure_rust_target(Some(MSRV), BARE_TARGET)?;

    step("formatting (cargo fmt --check)");
    run(cargo().args(["fmt", "--all", "--check"]))?;

    step("clippy, all targets, every feature, warnings denied");
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

    step("host unit tests");
    run(cargo().args(["test", "--workspace"]))?;

    step("no_std build of every library for x86_64-unknown-none");
    let mut bare = cargo();
    bare.args(["build", "--target", BARE_TARGET]);
    package_args(&mut bare);
    run(&mut bare)?;
    let mut bare_release = cargo();
    bare_release.args(["build", "--release", "--all-features", "--target", BARE_TARGET]);
    package_args(&mut bare_release);
    run(&mut bare_release)?;

    step(&format!("MSRV: the libraries build with Rust {MSRV}"));
    let mut msrv = cargo_with(MSRV);
    msrv.args(["check", "--target", BARE_TARGET, "--target-dir", "target/msrv"]);
    package_args(&mut msrv);
    run(&mut msrv)?;

    step("documentation, warnings denied");
    run(cargo().env("RUSTDOCFLAGS", "-D warnings").args([
        "doc",
        "--workspace",
        "--no-deps",
        "--all-features",
    ]))?;
    run(cargo().env("RUSTDOCFLAGS", "-D warnings").args(["test", "--workspace", "--doc"]))?;

    step("packaging: each library packages and its packaged copy builds");
    let mut package = cargo();
    package.args(["package", "--allow-dirty"]);
    package_args(&mut package);
    run(&mut package)?;

    step("example hypervisor: formatting and clippy (x86_64-unknown-none)");
    let example = util::root().join("examples/hypervisor");
    run(cargo().current_dir(&example).args(["fmt", "--check"]))?;
    run(cargo()
        .current_dir(&example)
        .env("CARGO_TARGET_DIR", util::root().join("target/example"))
        .args(["clippy", "--release", "--target", BARE_TARGET, "--", "-D", "warnings"]))?;

    if options.emulators {
        crate::emu::test_suite()?;
    }
    if options.fuzz {
        let seconds =
            std::env::var("HVKIT_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
        crate::fuzz::test_step(seconds)?;
    }

    println!("\nxtask test: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}
