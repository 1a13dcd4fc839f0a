//! The report lines the xtask runner checks: one `HVKIT SCENARIO` line per scenario and one
//! `HVKIT SUMMARY` line at the end.

use crate::port::{self, status};
use core::sync::atomic::{AtomicU64, Ordering};

/// One scenario line.
pub struct Line {
    pub name: &'static str,
    pub strategy: &'static str,
    pub sent: u64,
    pub exits: u64,
    pub handled: u64,
    pub eois: u64,
    pub insns_per_event: u64,
    pub pass: bool,
    pub extra: Extra,
}

/// Measurements some scenarios add.
#[derive(Default)]
pub struct Extra {
    pub exit_to_handler: u64,
    pub exit_to_entry: u64,
    pub events: u64,
}

/// The running totals of the summary line (atomics: any CPU may report).
struct Summary {
    scenarios: AtomicU64,
    passed: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
}

static SUMMARY: Summary = Summary {
    scenarios: AtomicU64::new(0),
    passed: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    skipped: AtomicU64::new(0),
    lost: AtomicU64::new(0),
    duplicated: AtomicU64::new(0),
};

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::SeqCst);
}

/// Prints a scenario line and adds it to the summary: a scenario passes only with nothing lost
/// and nothing duplicated.
pub fn report(line: Line) {
    let lost = line.sent.saturating_sub(line.handled);
    let duplicated = line.handled.saturating_sub(line.sent);
    let pass = line.pass && lost == 0 && duplicated == 0;
    crate::println!(
        "HVKIT SCENARIO name={} strategy={} sent={} exits={} handled={} eois={} lost={} duplicated={} insns_per_event={} exit_to_handler={} exit_to_entry={} events={} result={}",
        line.name,
        line.strategy,
        line.sent,
        line.exits,
        line.handled,
        line.eois,
        lost,
        duplicated,
        line.insns_per_event,
        line.extra.exit_to_handler,
        line.extra.exit_to_entry,
        line.extra.events,
        if pass { "PASS" } else { "FAIL" }
    );
    tally(pass, lost, duplicated);
}

/// Adds one reported scenario to the summary.
pub fn tally(pass: bool, lost: u64, duplicated: u64) {
    add(&SUMMARY.scenarios, 1);
    add(&SUMMARY.lost, lost);
    add(&SUMMARY.duplicated, duplicated);
    add(if pass { &SUMMARY.passed } else { &SUMMARY.failed }, 1);
}

/// Prints a skipped scenario with the reason.
pub fn skip(name: &str, reason: &str) {
    crate::println!(
        "HVKIT SCENARIO name={name} strategy=n/a sent=0 exits=0 handled=0 eois=0 lost=0 duplicated=0 insns_per_event=0 result=SKIP reason=\"{reason}\""
    );
    add(&SUMMARY.scenarios, 1);
    add(&SUMMARY.skipped, 1);
}

/// The bootstrap processor's guest is done: the SMP scenarios, then the summary line; ends the
/// run with its status.
pub fn finish() -> ! {
    crate::after_vmx_scenarios();
    finish_with(status::PASS)
}

/// Prints the summary line and ends the run: `pass_status` when everything passed (3 on a
/// machine without VMX, where only the host-side scenarios ran), else FAIL.
pub fn finish_with(pass_status: u32) -> ! {
    let get = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
    let (failed, lost, duplicated) =
        (get(&SUMMARY.failed), get(&SUMMARY.lost), get(&SUMMARY.duplicated));
    let passed = get(&SUMMARY.passed);
    let pass = failed == 0 && lost == 0 && duplicated == 0 && passed > 0;
    crate::println!(
        "HVKIT SUMMARY scenarios={} passed={passed} failed={failed} skipped={} lost={lost} duplicated={duplicated} result={}",
        get(&SUMMARY.scenarios),
        get(&SUMMARY.skipped),
        if pass { "PASS" } else { "FAIL" }
    );
    port::exit(if pass { pass_status } else { status::FAIL })
}
