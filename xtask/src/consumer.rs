//! The consumer check of `cargo xtask test`: a user's crate (xtask/consumer) built and tested
//! against the unpacked `cargo package` output of the four libraries, as crates.io would serve
//! them, instead of the workspace sources.

use crate::util::{self, Result, cargo, fail, run};
use std::path::Path;

/// The libraries' version, from the workspace manifest.
fn version() -> Result<String> {
    let manifest = std::fs::read_to_string(util::root().join("Cargo.toml"))
        .or_else(|error| fail(format!("reading Cargo.toml: {error}")))?;
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(value) = line.strip_prefix("version") {
            let value = value.trim_start().trim_start_matches('=').trim().trim_matches('"');
            return Ok(value.to_string());
        }
    }
    fail("no version in [workspace.package] of Cargo.toml")
}

/// The manifest of the consumer crate: the template with the version and the unpacked path.
fn manifest(template: &str, version: &str, unpacked: &Path) -> String {
    template.replace("@VERSION@", version).replace("@UNPACKED@", &unpacked.display().to_string())
}

/// Unpacks `target/package/*.crate` of `libraries` and runs the consumer crate's tests and a
/// `no_std` build of it for `bare_target`.
pub fn check(libraries: &[&str], bare_target: &str) -> Result {
    let version = version()?;
    let root = util::root();
    let work = root.join("target/consumer");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .or_else(|error| fail(format!("removing {}: {error}", work.display())))?;
    }
    let unpacked = work.join("unpacked");
    let krate = work.join("crate");
    for dir in [&unpacked, &krate.join("src"), &krate.join("tests")] {
        std::fs::create_dir_all(dir)
            .or_else(|error| fail(format!("creating {}: {error}", dir.display())))?;
    }
    for library in libraries {
        let file = root.join(format!("target/package-build/package/{library}-{version}.crate"));
        if !file.exists() {
            return fail(format!("{} is missing: run `cargo package` first", file.display()));
        }
        run(std::process::Command::new("tar").arg("-xzf").arg(&file).arg("-C").arg(&unpacked))?;
    }
    let source = root.join("xtask/consumer");
    let template = std::fs::read_to_string(source.join("Cargo.toml.in"))
        .or_else(|error| fail(format!("reading the consumer template: {error}")))?;
    let copy = |from: &str| {
        std::fs::copy(source.join(from), krate.join(from))
            .or_else(|error| fail(format!("copying {from}: {error}")))
    };
    copy("src/lib.rs")?;
    copy("tests/exit_sequence.rs")?;
    std::fs::write(krate.join("Cargo.toml"), manifest(&template, &version, &unpacked))
        .or_else(|error| fail(format!("writing the consumer manifest: {error}")))?;
    let target_dir = work.join("target");
    run(cargo().current_dir(&krate).arg("test").arg("--target-dir").arg(&target_dir))?;
    run(cargo()
        .current_dir(&krate)
        .args(["build", "--lib", "--target", bare_target, "--target-dir"])
        .arg(&target_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_points_every_library_at_its_unpacked_copy_of_this_version() {
        let template =
            std::fs::read_to_string(util::root().join("xtask/consumer/Cargo.toml.in")).unwrap();
        let text = manifest(&template, "9.8.7", Path::new("/x/unpacked"));
        assert!(!text.contains('@'), "{text}");
        for library in ["hvkit-vmx-core", "hvkit-apic", "hvkit-fred", "hvkit-nmi-reinject"] {
            assert!(text.contains(&format!("{library} = \"=9.8.7\"")), "{text}");
            assert!(
                text.contains(&format!("{library} = {{ path = \"/x/unpacked/{library}-9.8.7\" }}")),
                "{text}"
            );
        }
    }

    #[test]
    fn the_version_is_the_workspace_package_version() {
        let version = version().unwrap();
        assert!(
            version.split('.').count() == 3
                && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        );
    }
}
