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

/// The command line as a user would type it (environment assignments first).
pub fn render(command: &Command) -> String {
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

/// `true` when running as uid 0 (installing packages, building and entering a chroot).
pub fn is_root() -> bool {
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

/// The user's cache directory: `$XDG_CACHE_HOME` when set to an absolute path, else `~/.cache`.
pub fn cache_dir() -> Option<PathBuf> {
    let xdg = env::var_os("XDG_CACHE_HOME").map(PathBuf::from).filter(|path| path.is_absolute());
    xdg.or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
}

/// One apt source: a `deb` line of sources.list or one `Types: deb` stanza of a deb822 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// Parses a one-line-style file (`deb [options] URI SUITE COMPONENT...`); `deb-src` is skipped.
pub fn parse_sources_list(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        sources.push(AptSource {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
        });
    }
    sources
}

/// Parses a deb822 `.sources` file: stanzas separated by blank lines; `Enabled: no` is skipped.
pub fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for stanza in text.replace("\r\n", "\n").split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A continuation line (e.g. an inline Signed-By key): part of the previous field.
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let field = |name: &str| {
            fields.iter().find(|(key, _)| key == name).map_or("", |(_, value)| value.as_str())
        };
        let words = |name: &str| field(name).split_whitespace().map(str::to_string).collect();
        let types: Vec<String> = words("types");
        if !types.iter().any(|kind| kind == "deb") || field("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        for uri in field("uris").split_whitespace() {
            sources.push(AptSource {
                uri: uri.to_string(),
                suites: words("suites"),
                components: words("components"),
            });
        }
    }
    sources
}

/// The host's apt sources: /etc/apt/sources.list and the `*.list` and `*.sources` files in
/// /etc/apt/sources.list.d (other names, e.g. `*.disabled`, are ignored as apt ignores them).
pub fn host_apt_sources() -> Vec<AptSource> {
    let mut sources = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        sources.extend(parse_sources_list(&text));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|dir| dir.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|ext| ext.to_str()) {
            Some("list") => sources.extend(parse_sources_list(&text)),
            Some("sources") => sources.extend(parse_deb822_sources(&text)),
            _ => {}
        }
    }
    sources
}

/// The Debian archive mirror among `sources`: a `main` source of a release suite (not
/// `-security`, `-updates`, `-backports`) whose URI path ends in `/debian`. Security mirrors,
/// third-party repositories and Ubuntu archives do not qualify.
pub fn debian_mirror(sources: &[AptSource]) -> Option<String> {
    sources
        .iter()
        .find(|source| {
            let path = source.uri.trim_end_matches('/');
            let archive = path.rsplit('/').next() == Some("debian") && !path.contains("security");
            let release_suite = source.suites.iter().any(|suite| {
                !["-security", "-updates", "-backports", "-proposed-updates"]
                    .iter()
                    .any(|tail| suite.ends_with(tail))
                    && !suite.contains('/')
            });
            let main = source.components.iter().any(|component| component == "main");
            archive && release_suite && main
        })
        .map(|source| source.uri.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n\
# a comment\n\
URIs: http://mirror.example/debian\n\
Suites: bookworm bookworm-updates\n\
Components: main\n\
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
\n\
Types: deb\n\
URIs: http://mirror.example/debian-security\n\
Suites: bookworm-security\n\
Components: main\n";

    #[test]
    fn the_debian_mirror_comes_from_a_deb822_file_and_skips_security() {
        let sources = parse_deb822_sources(DEB822);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(debian_mirror(&sources).as_deref(), Some("http://mirror.example/debian"));
        let security_only = &sources[1..];
        assert_eq!(debian_mirror(security_only), None);
    }

    #[test]
    fn disabled_stanzas_source_packages_and_inline_keys_are_skipped() {
        let text = "Types: deb-src\nURIs: http://a.example/debian\nSuites: sid\nComponents: main\n\n\
Types: deb\nEnabled: no\nURIs: http://b.example/debian\nSuites: sid\nComponents: main\n\n\
Types: deb\nURIs: http://c.example/debian/\nSuites: trixie\nComponents: main contrib\n\
Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n URIs: http://evil.example/debian\n";
        let sources = parse_deb822_sources(text);
        assert_eq!(sources.len(), 1, "{sources:?}");
        assert_eq!(debian_mirror(&sources).as_deref(), Some("http://c.example/debian"));
    }

    #[test]
    fn one_line_sources_with_options_and_third_party_repositories() {
        let text = "# deb http://commented.example/debian sid main\n\
deb https://vendor.example/apt cloud-sdk-bookworm main\n\
deb-src http://other.example/debian bookworm main\n\
deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian/ bookworm main non-free\n";
        let sources = parse_sources_list(text);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[1].components, ["main", "non-free"]);
        assert_eq!(debian_mirror(&sources).as_deref(), Some("http://other.example/debian"));
        let ubuntu = parse_sources_list("deb http://mirror.example/ubuntu noble main\n");
        assert_eq!(debian_mirror(&ubuntu), None);
    }
}
