//! `cargo xtask mutants`: mutation testing of the decision modules with cargo-mutants.
//!
//! Each mutant is tested with its own crate's tests (cargo-mutants' default). The run prints,
//! per file, how many mutants were generated, caught, missed, unviable (did not build) and timed
//! out, and the mutation score. Every missed mutant must be listed in [`SURVIVORS`] with the
//! reason it survives (an equivalent mutant, or one that cannot be tested on this machine); an
//! undocumented survivor fails the command. Not part of `cargo xtask test`: a full run (about 800
//! mutants) took 40 minutes with `--jobs 1` on a busy two-core machine.

use crate::util::{self, Failure, Result, cargo, fail, note, root, run, step};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

/// The decision modules: the files whose logic the hypervisor's correctness rests on.
pub const MODULES: &[&str] = &[
    "vmx-core/src/entry_check.rs",
    "vmx-core/src/event.rs",
    "vmx-core/src/exit.rs",
    "vmx-core/src/exit/qualification.rs",
    "vmx-core/src/controls.rs",
    "vmx-core/src/vmcs.rs",
    "nmi-reinject/src/guest.rs",
    "nmi-reinject/src/exit_time.rs",
    "nmi-reinject/src/strategy.rs",
    "nmi-reinject/src/error.rs",
    "apic/src/icr.rs",
    "fred/src/frame.rs",
    "fred/src/config.rs",
];

/// The committed list of surviving mutants and why each survives (repository root).
pub const SURVIVORS: &str = "mutants-survivors.md";

/// Where cargo-mutants writes its `mutants.out` directory (under target/, never committed).
const OUTPUT: &str = "target/mutants";

const USAGE: &str = "\
cargo xtask mutants [--file PATTERN]... [--jobs N] [-- CARGO-MUTANTS-ARGS...]

  --file PATTERN   only the decision modules whose path contains PATTERN (repeatable), e.g.
                   `--file icr` or `--file vmx-core/src/event.rs`
  --jobs N, -j N   mutants built and tested in parallel (default: one per spare core)
  -- ARGS          passed to cargo-mutants unchanged (e.g. `-- --in-diff changes.diff`)

Modules: vmx-core entry_check, event, exit, exit/qualification, controls, vmcs; nmi-reinject
guest, exit_time, strategy, error; apic icr; fred frame, config. Every missed mutant must be
documented in mutants-survivors.md; an undocumented one fails the command.
";

struct Options {
    files: Vec<&'static str>,
    jobs: usize,
    passthrough: Vec<String>,
}

fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
}

fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut patterns: Vec<String> = Vec::new();
    let mut jobs = default_jobs();
    let mut passthrough = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--file" | "-f" => match iter.next() {
                Some(pattern) => patterns.push(pattern.clone()),
                None => return fail("--file takes a pattern"),
            },
            "--jobs" | "-j" => {
                jobs = iter
                    .next()
                    .and_then(|value| value.parse().ok())
                    .filter(|&jobs: &usize| jobs > 0)
                    .ok_or_else(|| Failure("--jobs takes a positive number".into()))?;
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--" => {
                passthrough.extend(iter.by_ref().cloned());
            }
            other => {
                return fail(format!("`cargo xtask mutants`: unknown option `{other}`\n\n{USAGE}"));
            }
        }
    }
    let files: Vec<&'static str> = if patterns.is_empty() {
        MODULES.to_vec()
    } else {
        let chosen: Vec<&'static str> = MODULES
            .iter()
            .copied()
            .filter(|module| patterns.iter().any(|pattern| module.contains(pattern.as_str())))
            .collect();
        if chosen.is_empty() {
            return fail(format!(
                "no decision module matches {patterns:?}; the modules are:\n  {}",
                MODULES.join("\n  ")
            ));
        }
        chosen
    };
    Ok(Some(Options { files, jobs, passthrough }))
}

fn ensure_cargo_mutants() -> Result {
    if util::probe(cargo().args(["mutants", "--version"])) {
        return Ok(());
    }
    note("installing cargo-mutants (missing): cargo install --locked cargo-mutants");
    run(cargo().args(["install", "--locked", "cargo-mutants"])).or_else(|_| {
        fail("could not install cargo-mutants; run: cargo install --locked cargo-mutants")
    })
}

/// One mutant as cargo-mutants lists it: the file and the description without line and column
/// (so that the survivors list does not go stale when code moves).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Mutant {
    file: String,
    description: String,
}

/// Parses a line of caught.txt / missed.txt / ...: `path:line:column: description`.
fn parse_mutant_line(line: &str) -> Option<Mutant> {
    let mut parts = line.splitn(4, ':');
    let file = parts.next()?.trim();
    let line_number = parts.next()?;
    let column = parts.next()?;
    let description = parts.next()?.trim();
    let numeric = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if file.is_empty() || !numeric(line_number) || !numeric(column) || description.is_empty() {
        return None;
    }
    Some(Mutant { file: file.to_string(), description: description.to_string() })
}

fn read_outcome(directory: &Path, name: &str) -> Result<Vec<Mutant>> {
    let path = directory.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return fail(format!("reading {}: {error}", path.display())),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            parse_mutant_line(line).ok_or_else(|| {
                Failure(format!("{}: cannot read the cargo-mutants line `{line}`", path.display()))
            })
        })
        .collect()
}

/// Why a documented mutant survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// No test can tell it from the original: it computes the same result for every input.
    Equivalent,
    /// A difference that exists but cannot be observed on this machine (hardware only).
    Untestable,
}

#[derive(Debug)]
struct Survivor {
    mutant: Mutant,
    reason: Reason,
}

/// Reads the survivors file: a `## path` heading per file, then one entry per mutant:
///
/// ```text
/// - `replace X::y -> bool with true`
///   Equivalent: why no test can tell the difference.
/// ```
///
/// The reason starts with `Equivalent:` or `Untestable:`. An entry covers one missed mutant,
/// or N when the description (which cargo-mutants repeats for each place in a function) is
/// followed by `(N places)`.
fn parse_survivors(text: &str) -> std::result::Result<Vec<Survivor>, String> {
    let mut survivors: Vec<Survivor> = Vec::new();
    let mut file: Option<String> = None;
    let mut pending: Option<(Mutant, usize, usize)> = None;
    let mut reason_text = String::new();
    let finish = |pending: &mut Option<(Mutant, usize, usize)>,
                  reason_text: &mut String,
                  survivors: &mut Vec<Survivor>|
     -> std::result::Result<(), String> {
        if let Some((mutant, line, count)) = pending.take() {
            let reason_line = reason_text.trim();
            let reason = if reason_line.starts_with("Equivalent:") {
                Reason::Equivalent
            } else if reason_line.starts_with("Untestable:") {
                Reason::Untestable
            } else {
                return Err(format!(
                    "line {line}: `{}` needs a reason starting with `Equivalent:` or `Untestable:`",
                    mutant.description
                ));
            };
            if reason_line.split_once(':').is_none_or(|(_, rest)| rest.trim().is_empty()) {
                return Err(format!(
                    "line {line}: the reason for `{}` is empty",
                    mutant.description
                ));
            }
            for _ in 0..count {
                survivors.push(Survivor { mutant: mutant.clone(), reason });
            }
        }
        reason_text.clear();
        Ok(())
    };
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some(heading) = line.strip_prefix("## ") {
            finish(&mut pending, &mut reason_text, &mut survivors)?;
            file = Some(heading.trim().trim_matches('`').to_string());
        } else if let Some(entry) = line.strip_prefix("- `") {
            finish(&mut pending, &mut reason_text, &mut survivors)?;
            let Some(file) = file.clone() else {
                return Err(format!("line {number}: an entry before any `## path` heading"));
            };
            let Some(end) = entry.rfind('`') else {
                return Err(format!("line {number}: the mutant must be written between backticks"));
            };
            let description = entry.get(..end).unwrap_or_default().trim().to_string();
            let count = match entry.get(end + 1..).unwrap_or_default().trim() {
                "" => 1,
                places => places
                    .strip_prefix('(')
                    .and_then(|rest| rest.strip_suffix(" places)"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n > 1)
                    .ok_or_else(|| {
                        format!("line {number}: after the mutant only `(N places)` may follow")
                    })?,
            };
            pending = Some((Mutant { file, description }, number, count));
        } else if pending.is_some() && line.starts_with(char::is_whitespace) {
            reason_text.push_str(line.trim());
            reason_text.push(' ');
        } else {
            finish(&mut pending, &mut reason_text, &mut survivors)?;
        }
    }
    finish(&mut pending, &mut reason_text, &mut survivors)?;
    Ok(survivors)
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    caught: usize,
    missed: usize,
    unviable: usize,
    timeout: usize,
    equivalent: usize,
    untestable: usize,
}

impl Counts {
    fn total(&self) -> usize {
        self.caught + self.missed + self.unviable + self.timeout
    }

    /// The mutation score: caught mutants (a timeout counts as caught: the tests noticed) over
    /// the viable mutants that are not documented as equivalent (an equivalent mutant is the
    /// same program; no test can catch it). Untestable survivors count as missed.
    fn score(&self) -> f64 {
        let detected = self.caught + self.timeout;
        let killable = (detected + self.missed).saturating_sub(self.equivalent);
        if killable == 0 { 100.0 } else { 100.0 * detected as f64 / killable as f64 }
    }

    /// Caught over every viable mutant, equivalent ones included.
    fn raw_score(&self) -> f64 {
        let viable = self.caught + self.timeout + self.missed;
        if viable == 0 {
            100.0
        } else {
            100.0 * (self.caught + self.timeout) as f64 / viable as f64
        }
    }

    fn add(&mut self, other: &Counts) {
        self.caught += other.caught;
        self.missed += other.missed;
        self.unviable += other.unviable;
        self.timeout += other.timeout;
        self.equivalent += other.equivalent;
        self.untestable += other.untestable;
    }
}

fn table(counts: &BTreeMap<String, Counts>) -> String {
    let mut text = String::new();
    let header = format!(
        "{:<36} {:>5} {:>6} {:>6} {:>8} {:>7} {:>6} {:>6} {:>6}",
        "file", "total", "caught", "missed", "unviable", "timeout", "equiv", "score", "raw"
    );
    let _ = writeln!(text, "{header}");
    let _ = writeln!(text, "{}", "-".repeat(header.len()));
    let mut all = Counts::default();
    let mut row = |name: &str, c: &Counts| {
        let _ = writeln!(
            text,
            "{:<36} {:>5} {:>6} {:>6} {:>8} {:>7} {:>6} {:>5.1}% {:>5.1}%",
            name,
            c.total(),
            c.caught,
            c.missed,
            c.unviable,
            c.timeout,
            c.equivalent,
            c.score(),
            c.raw_score()
        );
    };
    for (file, c) in counts {
        row(file, c);
        all.add(c);
    }
    row("all", &all);
    text
}

/// `cargo xtask mutants [--file PATTERN]... [--jobs N] [-- ARGS]`.
pub fn command(args: &[String]) -> Result {
    let Some(options) = parse(args)? else {
        return Ok(());
    };
    let survivors_path = root().join(SURVIVORS);
    let survivors_text = fs::read_to_string(&survivors_path)
        .map_err(|error| Failure(format!("reading {}: {error}", survivors_path.display())))?;
    let survivors = parse_survivors(&survivors_text)
        .map_err(|error| Failure(format!("{SURVIVORS}: {error}")))?;
    for survivor in &survivors {
        if !MODULES.contains(&survivor.mutant.file.as_str()) {
            return fail(format!(
                "{SURVIVORS}: `{}` is not a decision module",
                survivor.mutant.file
            ));
        }
    }

    step("mutation testing: cargo-mutants over the decision modules, each crate's own tests");
    ensure_cargo_mutants()?;
    let mut command: Command = cargo();
    command
        .args(["mutants", "--no-shuffle", "--output", OUTPUT])
        .arg(format!("--jobs={}", options.jobs));
    for file in &options.files {
        command.args(["--file", file]);
    }
    command.args(&options.passthrough);
    // cargo-mutants exits 0 (all caught), 2 (some missed) or 3 (some timed out) after a
    // complete run; anything else (1 usage, 4 baseline tests fail, ...) means no result.
    note(&format!("$ {command:?}"));
    let status = command
        .status()
        .map_err(|error| Failure(format!("could not start cargo mutants: {error}")))?;
    if !matches!(status.code(), Some(0 | 2 | 3)) {
        return fail(format!("cargo mutants did not complete ({status}); see {OUTPUT}"));
    }

    let directory = root().join(OUTPUT).join("mutants.out");
    let mut counts: BTreeMap<String, Counts> =
        options.files.iter().map(|file| (file.to_string(), Counts::default())).collect();
    let caught = read_outcome(&directory, "caught.txt")?;
    let missed = read_outcome(&directory, "missed.txt")?;
    let unviable = read_outcome(&directory, "unviable.txt")?;
    let timeout = read_outcome(&directory, "timeout.txt")?;
    for (list, field) in [(&caught, 0usize), (&missed, 1), (&unviable, 2), (&timeout, 3)] {
        for mutant in list {
            let entry = counts.entry(mutant.file.clone()).or_default();
            match field {
                0 => entry.caught += 1,
                1 => entry.missed += 1,
                2 => entry.unviable += 1,
                _ => entry.timeout += 1,
            }
        }
    }

    // Match missed mutants against the documented ones, one entry per mutant.
    let mut documented: Vec<Option<&Survivor>> = survivors.iter().map(Some).collect();
    let mut undocumented: Vec<&Mutant> = Vec::new();
    for mutant in &missed {
        let found = documented
            .iter_mut()
            .find(|slot| slot.is_some_and(|survivor| survivor.mutant == *mutant));
        match found.and_then(Option::take) {
            Some(survivor) => {
                let entry = counts.entry(mutant.file.clone()).or_default();
                match survivor.reason {
                    Reason::Equivalent => entry.equivalent += 1,
                    Reason::Untestable => entry.untestable += 1,
                }
            }
            None => undocumented.push(mutant),
        }
    }
    let stale: Vec<&Survivor> = documented
        .into_iter()
        .flatten()
        .filter(|survivor| options.files.contains(&survivor.mutant.file.as_str()))
        .collect();

    step(
        "mutation score per file (score: caught and timed out / viable mutants not documented \
         as equivalent; raw: over all viable mutants)",
    );
    print!("{}", table(&counts));
    let untestable: usize = counts.values().map(|c| c.untestable).sum();
    if untestable > 0 {
        note(&format!("{untestable} missed mutants are documented as untestable on this machine"));
    }
    for (file, c) in &counts {
        if c.score() < 95.0 {
            note(&format!("{file}: score {:.1}% is below the 95% goal", c.score()));
        }
    }
    if !stale.is_empty() {
        note(&format!(
            "{} entries of {SURVIVORS} were not missed in this run (caught now, or not \
             generated): remove them if a full run agrees:",
            stale.len()
        ));
        for survivor in &stale {
            note(&format!("  {}: {}", survivor.mutant.file, survivor.mutant.description));
        }
    }
    if !undocumented.is_empty() {
        let mut message = format!(
            "{} missed mutants are not documented in {SURVIVORS} (add a test that catches \
             each, or document why it survives):",
            undocumented.len()
        );
        for mutant in &undocumented {
            let _ = write!(message, "\n  {}: {}", mutant.file, mutant.description);
        }
        return fail(message);
    }
    note("every missed mutant is documented");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutant_lines_lose_line_and_column_only() {
        let mutant =
            parse_mutant_line("apic/src/icr.rs:212:19: replace < with <= in Ipi::fixed").unwrap();
        assert_eq!(mutant.file, "apic/src/icr.rs");
        assert_eq!(mutant.description, "replace < with <= in Ipi::fixed");
        let mutant = parse_mutant_line("a.rs:1:2: replace x -> &'static str with \"a:b\"").unwrap();
        assert_eq!(mutant.description, "replace x -> &'static str with \"a:b\"");
        assert_eq!(parse_mutant_line("no colon here"), None);
        assert_eq!(parse_mutant_line("a.rs:x:2: replace"), None);
        assert_eq!(parse_mutant_line("a.rs:1:2: "), None);
    }

    #[test]
    fn survivors_need_a_file_and_a_reason() {
        let text = "# title\n\nprose\n\n## `a/src/b.rs`\n\n- `replace f -> bool with true`\n  \
                    Equivalent: f is\n  always true.\n- `replace & with | in g`\n  Untestable: \
                    needs VMX hardware.\n";
        let survivors = parse_survivors(text).unwrap();
        assert_eq!(survivors.len(), 2);
        assert_eq!(survivors[0].mutant.file, "a/src/b.rs");
        assert_eq!(survivors[0].mutant.description, "replace f -> bool with true");
        assert_eq!(survivors[0].reason, Reason::Equivalent);
        assert_eq!(survivors[1].mutant.description, "replace & with | in g");
        assert_eq!(survivors[1].reason, Reason::Untestable);
        let repeated = "## a.rs\n- `replace | with ^ in f` (3 places)\n  Equivalent: disjoint.\n";
        let survivors = parse_survivors(repeated).unwrap();
        assert_eq!(survivors.len(), 3);
        assert!(survivors.iter().all(|s| s.mutant.description == "replace | with ^ in f"));
        assert!(parse_survivors("## a.rs\n- `f` (1 places)\n  Equivalent: x\n").is_err());
        assert!(parse_survivors("## a.rs\n- `f` twice\n  Equivalent: x\n").is_err());
        assert!(parse_survivors("- `replace f with g`\n  Equivalent: x\n").is_err());
        assert!(parse_survivors("## a.rs\n- `replace f with g`\n").is_err());
        assert!(parse_survivors("## a.rs\n- `replace f with g`\n  Because.\n").is_err());
        assert!(parse_survivors("## a.rs\n- `replace f with g`\n  Equivalent:\n").is_err());
    }

    #[test]
    fn score_counts_timeouts_as_caught_and_ignores_unviable() {
        let c = Counts { caught: 18, missed: 1, unviable: 5, timeout: 1, ..Counts::default() };
        assert_eq!(c.total(), 25);
        assert!((c.score() - 95.0).abs() < 1e-9);
        assert!((c.raw_score() - 95.0).abs() < 1e-9);
        assert!((Counts::default().score() - 100.0).abs() < 1e-9);
        // An equivalent mutant is not a mutant any test could catch.
        let c = Counts { caught: 19, missed: 2, equivalent: 1, ..Counts::default() };
        assert!((c.score() - 95.0).abs() < 1e-9);
        assert!((c.raw_score() - 100.0 * 19.0 / 21.0).abs() < 1e-9);
    }

    #[test]
    fn committed_survivors_file_is_well_formed() {
        let text = fs::read_to_string(root().join(SURVIVORS)).unwrap();
        let survivors = parse_survivors(&text).unwrap();
        for survivor in survivors {
            assert!(MODULES.contains(&survivor.mutant.file.as_str()), "{:?}", survivor.mutant);
        }
    }
}
