//! Running commands and installing prerequisites, with every action announced.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// A failed step: the message is printed and the process exits 1.
#[derive(Debug)]
pub struct Failure(pub String);

pub type Result<T = ()> = std::result::Result<T, Failure>;

pub fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(Failure(message.into()))
}

/// The workspace root (the parent of xtask/).
pub fn root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    match manifest.as_deref().and_then(Path::parent) {
        Some(root) => root.to_path_buf(),
        None => PathBuf::from("."),
    }
}

pub fn step(title: &str) {
    println!("\n==> {title}");
}

pub fn note(text: &str) {
    println!("    {text}");
}

fn render(command: &Command) -> String {
    let mut text = String::new();
    for (key, value) in command.get_envs() {
        if let (Some(key), Some(value)) = (key.to_str(), value.and_then(|v| v.to_str())) {
            text.push_str(&format!("{key}={value} "));
        }
    }
    text.push_str(&command.get_program().to_string_lossy());
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs a command with inherited output; a non-zero exit is a failure naming the command.
pub fn run(command: &mut Command) -> Result {
    let shown = render(command);
    println!("    $ {shown}");
    let status = status_of(command, &shown)?;
    if status.success() { Ok(()) } else { fail(format!("`{shown}` failed with {status}")) }
}

fn status_of(command: &mut Command, shown: &str) -> Result<ExitStatus> {
    command.status().map_err(|error| Failure(format!("could not start `{shown}`: {error}")))
}

/// Runs a command quietly and returns whether it succeeded (used for probes).
pub fn probe(command: &mut Command) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Captures a command's standard output (probes; failure gives `None`).
pub fn output_of(command: &mut Command) -> Option<String> {
    let output = command.stderr(std::process::Stdio::null()).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root());
    command
}

/// `cargo +TOOLCHAIN`, through rustup so the toolchain override is honoured.
pub fn cargo_with(toolchain: &str) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", toolchain, "cargo"]).current_dir(root());
    // The outer cargo's choice of rustc must not leak into the other toolchain.
    for variable in ["RUSTC", "RUSTDOC", "CARGO", "RUSTUP_TOOLCHAIN", "RUSTC_WRAPPER"] {
        command.env_remove(variable);
    }
    command
}

fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

/// Makes sure a rustup target is installed for the active toolchain (or `toolchain`).
pub fn ensure_rust_target(toolchain: Option<&str>, target: &str) -> Result {
    let mut list = Command::new("rustup");
    list.args(["target", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        list.args(["--toolchain", toolchain]);
    }
    if output_of(&mut list).is_some_and(|out| out.lines().any(|line| line.trim() == target)) {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", target]);
    if let Some(toolchain) = toolchain {
        add.args(["--toolchain", toolchain]);
    }
    note(&format!("installing the Rust target {target} (missing)"));
    run(&mut add).or_else(|_| fail(format!("could not install the target; run: {}", render(&add))))
}

/// Makes sure a rustup toolchain is installed (minimal profile plus the given components).
pub fn ensure_toolchain(toolchain: &str, components: &[&str]) -> Result {
    let installed = output_of(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|out| out.lines().any(|line| line.starts_with(toolchain)));
    let mut install = Command::new("rustup");
    install.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
    for component in components {
        install.args(["--component", component]);
    }
    if !installed {
        note(&format!("installing the Rust toolchain {toolchain} (missing)"));
        return run(&mut install)
            .or_else(|_| fail(format!("could not install it; run: {}", render(&install))));
    }
    for component in components {
        let present = output_of(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]))
        .is_some_and(|out| out.lines().any(|line| line.starts_with(component)));
        if !present {
            let mut add = Command::new("rustup");
            add.args(["component", "add", component, "--toolchain", toolchain]);
            note(&format!("installing the {component} component for {toolchain} (missing)"));
            run(&mut add)
                .or_else(|_| fail(format!("could not install it; run: {}", render(&add))))?;
        }
    }
    Ok(())
}

/// Makes sure Debian packages are installed: each entry is (package, a file it provides).
pub fn ensure_apt(packages: &[(&str, &str)]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command_text = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        return fail(format!(
            "missing Debian packages: {}. Run as root: apt-get update && {command_text}",
            missing.join(" ")
        ));
    }
    note(&format!("installing Debian packages (missing): {}", missing.join(" ")));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
    .or_else(|_| fail(format!("could not install; run as root: apt-get update && {command_text}")))
}
