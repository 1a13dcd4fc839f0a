//! Parsing the example hypervisor's serial report.

use std::collections::BTreeMap;

/// One `HVKIT SCENARIO` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub fields: BTreeMap<String, String>,
}

impl Scenario {
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }

    pub fn number(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|value| value.parse().ok())
    }
}

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub scenarios: Vec<Scenario>,
    pub summary: Option<BTreeMap<String, String>>,
    pub exit_status: Option<u32>,
    pub no_vmx: Option<String>,
    /// The reason of an `HVKIT NOLONGMODE` line (a CPU without long mode).
    pub no_long_mode: Option<String>,
    /// `HVKIT smp cpus=N`: how many CPUs checked in.
    pub smp_cpus: Option<u32>,
    /// `HVKIT cpu index=.. apic_id=.. apic=..` lines (one per CPU per APIC mode).
    pub cpus: Vec<BTreeMap<String, String>>,
    /// The scenarios of an `HVKIT VMX-NOT-RUN` line (no VMX: which could not run).
    pub vmx_not_run: Option<String>,
}

/// Splits `key=value key="quoted value"` pairs.
fn pairs(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some(equals) = rest.find('=') else { break };
        let key = rest[..equals].trim().to_string();
        let after = &rest[equals + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.find(' ') {
                Some(end) => (after[..end].to_string(), &after[end..]),
                None => (after.to_string(), ""),
            }
        };
        fields.insert(key, value);
        rest = next.trim_start();
    }
    fields
}

/// Parses the serial output (other lines are ignored).
pub fn parse(serial: &str) -> Report {
    let mut report = Report::default();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("HVKIT SCENARIO ") {
            report.scenarios.push(Scenario { fields: pairs(rest) });
        } else if let Some(rest) = line.strip_prefix("HVKIT SUMMARY ") {
            report.summary = Some(pairs(rest));
        } else if let Some(rest) = line.strip_prefix("HVKIT EXIT status=") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            report.exit_status = digits.parse().ok();
        } else if let Some(rest) = line.strip_prefix("HVKIT NOVMX ") {
            report.no_vmx = pairs(rest).get("reason").cloned();
        } else if let Some(rest) = line.strip_prefix("HVKIT NOLONGMODE ") {
            report.no_long_mode = pairs(rest).get("reason").cloned();
        } else if let Some(rest) = line.strip_prefix("HVKIT smp ") {
            report.smp_cpus = pairs(rest).get("cpus").and_then(|value| value.parse().ok());
        } else if let Some(rest) = line.strip_prefix("HVKIT cpu ") {
            report.cpus.push(pairs(rest));
        } else if let Some(rest) = line.strip_prefix("HVKIT VMX-NOT-RUN ") {
            report.vmx_not_run = pairs(rest).get("scenarios").cloned();
        }
    }
    report
}

/// What a scenario run must show: every problem found, empty when the run is good.
pub fn problems(report: &Report) -> Vec<String> {
    problems_with_status(report, 0)
}

/// [`problems`] for a run that must end with `status` when everything it ran passed (3 on a
/// machine without VMX, where only the host-side scenarios run).
pub fn problems_with_status(report: &Report, status: u32) -> Vec<String> {
    let mut problems = Vec::new();
    if report.scenarios.is_empty() {
        problems.push("no scenario lines".to_string());
    }
    for scenario in &report.scenarios {
        let name = scenario.get("name");
        let strategy = scenario.get("strategy");
        match scenario.get("result") {
            "PASS" | "SKIP" => {}
            other => problems.push(format!("{name}/{strategy}: result {other:?}")),
        }
        for key in ["lost", "duplicated"] {
            match scenario.number(key) {
                Some(0) => {}
                Some(count) => problems.push(format!("{name}/{strategy}: {key}={count}")),
                None => problems.push(format!("{name}/{strategy}: missing {key}")),
            }
        }
    }
    match &report.summary {
        None => problems.push("missing HVKIT SUMMARY line".to_string()),
        Some(summary) => {
            if summary.get("result").map(String::as_str) != Some("PASS") {
                problems.push(format!("summary result {:?}", summary.get("result")));
            }
            let count = summary.get("scenarios").and_then(|value| value.parse::<usize>().ok());
            if count != Some(report.scenarios.len()) {
                problems.push(format!(
                    "summary counts {count:?} scenarios, report has {}",
                    report.scenarios.len()
                ));
            }
        }
    }
    match report.exit_status {
        Some(found) if found == status => {}
        Some(found) => problems.push(format!("exit status {found} (expected {status})")),
        None => problems.push("missing HVKIT EXIT line".to_string()),
    }
    problems
}

/// The host-side scenarios every machine runs, once per APIC mode.
const HOST_SIDE: [&str; 3] = ["self-ipi", "self-nmi", "idt-direct-call"];

/// The SMP part of a run with `cpus` CPUs: every CPU checked in and has its `HVKIT cpu` line,
/// and the host-side scenarios ran in xAPIC mode and in x2APIC mode (or the x2APIC run was
/// skipped with its reason), with a cross-CPU fixed-IPI and NMI line for every other CPU.
/// Whether those lines passed is [`problems`]' business.
pub fn smp_problems(report: &Report, cpus: u32) -> Vec<String> {
    let mut problems = Vec::new();
    if report.smp_cpus != Some(cpus) {
        problems.push(format!("{:?} CPUs checked in, expected {cpus}", report.smp_cpus));
    }
    let x2apic_skipped = report.scenarios.iter().any(|scenario| {
        scenario.get("name") == "host-side-x2apic" && scenario.get("result") == "SKIP"
    });
    let modes: &[&str] = if x2apic_skipped { &["xapic"] } else { &["xapic", "x2apic"] };
    for mode in modes {
        for index in 0..cpus {
            let index = index.to_string();
            let found = report.cpus.iter().any(|cpu| {
                cpu.get("index") == Some(&index)
                    && cpu.get("apic").map(String::as_str) == Some(mode)
            });
            if !found {
                problems.push(format!("no HVKIT cpu line for cpu {index} in {mode} mode"));
            }
        }
        let line = |name: &str, target: u32| {
            report.scenarios.iter().any(|scenario| {
                scenario.get("name") == name
                    && scenario.get("apic") == *mode
                    && scenario.get("target") == target.to_string()
            })
        };
        for name in HOST_SIDE {
            if !line(name, 0) {
                problems.push(format!("no {name} line in {mode} mode"));
            }
        }
        for target in 1..cpus {
            for name in ["cross-ipi", "cross-nmi"] {
                if !line(name, target) {
                    problems.push(format!("no {name} line for cpu {target} in {mode} mode"));
                }
            }
        }
    }
    problems
}

/// The scenarios with the target CPU in its guest, each per application processor and per
/// re-delivery strategy (runs with VMX only).
const GUEST_SIDE: [&str; 4] = ["guest-cross-nmi", "multiple-nmi", "pending-nmi", "guest-cross-ipi"];

/// The FRED re-delivery strategies the SMP guest scenarios run with when the CPU has FRED
/// (the APs' hosts in FRED mode, xAPIC only).
const FRED_STRATEGIES: [&str; 2] = ["fred-direct-call", "fred-self-nmi"];

/// The VMX part of an SMP run with `cpus` CPUs: every guest-side scenario has a line per AP,
/// strategy and APIC mode (x2APIC unless its run was skipped), and the storm a line per CPU and strategy (whether they passed is
/// [`problems`]' business); the same in xAPIC mode with the FRED strategies unless an
/// `smp-guest-fred` SKIP line says why not. A one-CPU run must say why it
/// skipped them.
pub fn smp_vmx_problems(report: &Report, cpus: u32) -> Vec<String> {
    let mut problems = Vec::new();
    if cpus < 2 {
        if !report
            .scenarios
            .iter()
            .any(|s| s.get("name") == "smp-guest" && s.get("result") == "SKIP")
        {
            problems.push("one CPU: no smp-guest SKIP line".to_string());
        }
        return problems;
    }
    let x2apic_skipped = report.scenarios.iter().any(|scenario| {
        scenario.get("name") == "host-side-x2apic" && scenario.get("result") == "SKIP"
    });
    let modes: &[&str] = if x2apic_skipped { &["xapic"] } else { &["xapic", "x2apic"] };
    for mode in modes {
        for target in 1..cpus {
            for name in GUEST_SIDE {
                for strategy in ["direct-call", "self-nmi"] {
                    let found = report.scenarios.iter().any(|scenario| {
                        scenario.get("name") == name
                            && scenario.get("strategy") == strategy
                            && scenario.get("apic") == *mode
                            && scenario.get("target") == target.to_string()
                    });
                    if !found {
                        problems.push(format!(
                            "no {name}/{strategy} line for cpu {target} in {mode} mode"
                        ));
                    }
                }
            }
        }
    }
    let fred_skipped = report.scenarios.iter().any(|scenario| {
        scenario.get("name") == "smp-guest-fred" && scenario.get("result") == "SKIP"
    });
    let fred: &[&str] = if fred_skipped { &[] } else { &FRED_STRATEGIES };
    for target in 1..cpus {
        for name in GUEST_SIDE {
            for strategy in fred {
                let found = report.scenarios.iter().any(|scenario| {
                    scenario.get("name") == name
                        && scenario.get("strategy") == *strategy
                        && scenario.get("apic") == "xapic"
                        && scenario.get("target") == target.to_string()
                });
                if !found {
                    problems
                        .push(format!("no {name}/{strategy} line for cpu {target} in xapic mode"));
                }
            }
        }
    }
    for cpu in 0..cpus {
        for strategy in ["direct-call", "self-nmi"].iter().chain(fred) {
            let found = report.scenarios.iter().any(|scenario| {
                scenario.get("name") == "storm-smp"
                    && scenario.get("strategy") == *strategy
                    && scenario.get("cpu") == cpu.to_string()
            });
            if !found {
                problems.push(format!("no storm-smp/{strategy} line for cpu {cpu}"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "HVKIT boot magic=0x36d76289\r\n\
HVKIT SCENARIO name=host-nmi strategy=direct-call sent=200 exits=200 handled=200 eois=0 lost=0 duplicated=0 insns_per_event=742 result=PASS\r\n\
HVKIT SCENARIO name=fred strategy=n/a sent=0 exits=0 handled=0 eois=0 lost=0 duplicated=0 insns_per_event=0 result=SKIP reason=\"CPU has no FRED (CPUID.(7,1):EAX[17]=0)\"\r\n\
HVKIT SUMMARY scenarios=2 passed=1 failed=0 skipped=1 lost=0 duplicated=0 result=PASS\r\n\
HVKIT EXIT status=0";

    #[test]
    fn a_good_report_has_no_problems() {
        let report = parse(GOOD);
        assert_eq!(report.scenarios.len(), 2);
        assert_eq!(report.scenarios[0].number("handled"), Some(200));
        assert_eq!(report.scenarios[1].get("reason"), "CPU has no FRED (CPUID.(7,1):EAX[17]=0)");
        assert_eq!(report.exit_status, Some(0), "an unterminated last line still counts");
        assert_eq!(problems(&report), Vec::<String>::new());
    }

    #[test]
    fn each_kind_of_bad_report_is_caught() {
        let lost = GOOD.replace(
            "lost=0 duplicated=0 insns_per_event=742",
            "lost=1 duplicated=0 insns_per_event=742",
        );
        assert!(problems(&parse(&lost)).iter().any(|p| p.contains("lost=1")));
        let duplicated = GOOD.replace(
            "lost=0 duplicated=0 insns_per_event=742",
            "lost=0 duplicated=2 insns_per_event=742",
        );
        assert!(problems(&parse(&duplicated)).iter().any(|p| p.contains("duplicated=2")));
        let failed = GOOD.replacen("result=PASS", "result=FAIL", 1);
        assert!(problems(&parse(&failed)).iter().any(|p| p.contains("FAIL")));
        let no_summary: String =
            GOOD.lines().filter(|l| !l.contains("SUMMARY")).collect::<Vec<_>>().join("\n");
        assert!(problems(&parse(&no_summary)).iter().any(|p| p.contains("SUMMARY")));
        let no_exit: String =
            GOOD.lines().filter(|l| !l.contains("EXIT")).collect::<Vec<_>>().join("\n");
        assert!(problems(&parse(&no_exit)).iter().any(|p| p.contains("EXIT")));
        let truncated: String = GOOD.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(problems(&parse(&truncated)).len() >= 2, "a cut-off run fails");
        let miscounted = GOOD.replace("scenarios=2", "scenarios=3");
        assert!(problems(&parse(&miscounted)).iter().any(|p| p.contains("summary counts")));
        let missing_field =
            GOOD.replace(" duplicated=0 insns_per_event=742", " insns_per_event=742");
        assert!(problems(&parse(&missing_field)).iter().any(|p| p.contains("missing duplicated")));
        assert!(!problems(&parse("")).is_empty());
    }

    const SMP: &str = "HVKIT smp cpus=2\n\
HVKIT cpu index=0 apic_id=0 bsp=true apic=xapic online=1\n\
HVKIT cpu index=1 apic_id=1 bsp=false apic=xapic online=1\n\
HVKIT SCENARIO name=self-ipi strategy=n/a apic=xapic cpu=0 target=0 sent=10 exits=0 handled=10 eois=10 lost=0 duplicated=0 insns_per_event=0 irr_seen=10 result=PASS\n\
HVKIT SCENARIO name=self-nmi strategy=n/a apic=xapic cpu=0 target=0 sent=10 exits=0 handled=10 eois=0 lost=0 duplicated=0 insns_per_event=0 delivery_confirmed=10 result=PASS\n\
HVKIT SCENARIO name=cross-ipi strategy=n/a apic=xapic cpu=0 target=1 sent=10 exits=0 handled=10 eois=10 lost=0 duplicated=0 insns_per_event=0 not_in_service=0 result=PASS\n\
HVKIT SCENARIO name=cross-nmi strategy=n/a apic=xapic cpu=0 target=1 sent=10 exits=0 handled=10 eois=0 lost=0 duplicated=0 insns_per_event=0 result=PASS\n\
HVKIT SCENARIO name=idt-direct-call strategy=direct-call apic=xapic cpu=0 target=0 sent=20 exits=0 handled=20 eois=10 lost=0 duplicated=0 insns_per_event=0 result=PASS\n\
HVKIT SCENARIO name=host-side-x2apic strategy=n/a sent=0 exits=0 handled=0 eois=0 lost=0 duplicated=0 insns_per_event=0 result=SKIP reason=\"CPUID.1:ECX[21] = 0: no x2APIC mode\"\n\
HVKIT NOVMX reason=\"no VMX\"\n\
HVKIT VMX-NOT-RUN scenarios=\"entry-checks,host-nmi\" reason=\"no VMX\"\n\
HVKIT SUMMARY scenarios=6 passed=5 failed=0 skipped=1 lost=0 duplicated=0 result=PASS\n\
HVKIT EXIT status=3\n";

    #[test]
    fn a_good_no_vmx_smp_run_has_no_problems() {
        let report = parse(SMP);
        assert_eq!(report.smp_cpus, Some(2));
        assert_eq!(report.cpus.len(), 2);
        assert_eq!(report.vmx_not_run.as_deref(), Some("entry-checks,host-nmi"));
        assert_eq!(problems_with_status(&report, 3), Vec::<String>::new());
        assert_eq!(smp_problems(&report, 2), Vec::<String>::new());
        assert!(
            problems(&report).iter().any(|p| p.contains("exit status 3")),
            "status 3 is a failure where VMX scenarios were expected"
        );
    }

    #[test]
    fn smp_problems_catch_a_missing_cpu_or_cross_cpu_line() {
        let report = parse(SMP);
        assert!(smp_problems(&report, 4).iter().any(|p| p.contains("expected 4")));
        assert!(smp_problems(&report, 4).iter().any(|p| p.contains("cross-nmi line for cpu 3")));
        let no_ap = SMP.replace("HVKIT cpu index=1", "HVKIT other index=1");
        assert!(smp_problems(&parse(&no_ap), 2).iter().any(|p| p.contains("cpu 1 in xapic")));
        let no_cross = SMP.replace("name=cross-ipi", "name=other");
        assert!(smp_problems(&parse(&no_cross), 2).iter().any(|p| p.contains("no cross-ipi")));
        let no_self_nmi = SMP.replace("name=self-nmi", "name=other");
        assert!(smp_problems(&parse(&no_self_nmi), 2).iter().any(|p| p.contains("no self-nmi")));
        // Without the x2APIC SKIP line, the x2APIC run is required.
        let x2apic_expected = SMP.replace("name=host-side-x2apic", "name=other");
        assert!(
            smp_problems(&parse(&x2apic_expected), 2)
                .iter()
                .any(|p| p.contains("cpu 0 in x2apic mode"))
        );
    }

    #[test]
    fn smp_vmx_problems_need_every_guest_line_per_ap_and_strategy() {
        let mut text = String::from(
            "HVKIT SCENARIO name=host-side-x2apic strategy=n/a sent=0 exits=0 handled=0 eois=0 lost=0 duplicated=0 insns_per_event=0 result=SKIP reason=\"no x2APIC\"\n\
HVKIT SCENARIO name=smp-guest-fred strategy=n/a sent=0 exits=0 handled=0 eois=0 lost=0 duplicated=0 insns_per_event=0 result=SKIP reason=\"no FRED\"\n",
        );
        for name in GUEST_SIDE {
            for strategy in ["direct-call", "self-nmi"] {
                text.push_str(&format!(
                    "HVKIT SCENARIO name={name} strategy={strategy} apic=xapic cpu=0 target=1 sent=2 exits=1 handled=1 eois=0 merged=1 lost=0 duplicated=0 insns_per_event=0 result=PASS\n"
                ));
            }
        }
        for cpu in 0..2 {
            for strategy in ["direct-call", "self-nmi"] {
                text.push_str(&format!(
                    "HVKIT SCENARIO name=storm-smp strategy={strategy} apic=xapic cpu={cpu} target={cpu} sent=10000 exits=0 handled=10000 eois=0 merged=0 lost=0 duplicated=0 insns_per_event=0 result=PASS\n"
                ));
            }
        }
        assert_eq!(smp_vmx_problems(&parse(&text), 2), Vec::<String>::new());
        let no_storm = text.replace("name=storm-smp strategy=self-nmi apic=xapic cpu=1", "name=x");
        assert!(
            smp_vmx_problems(&parse(&no_storm), 2)
                .iter()
                .any(|p| p.contains("no storm-smp/self-nmi line for cpu 1"))
        );
        assert!(smp_vmx_problems(&parse(&text), 3).iter().any(|p| p.contains("cpu 2")));
        let missing =
            text.replace("name=pending-nmi strategy=self-nmi", "name=other strategy=self-nmi");
        assert!(
            smp_vmx_problems(&parse(&missing), 2)
                .iter()
                .any(|p| p.contains("no pending-nmi/self-nmi line for cpu 1 in xapic mode"))
        );
        // With x2APIC offered, the guest lines are needed in both modes.
        let both = text.replace("name=host-side-x2apic", "name=other");
        assert!(
            smp_vmx_problems(&parse(&both), 2)
                .iter()
                .any(|p| p.contains("no guest-cross-nmi/direct-call line for cpu 1 in x2apic mode"))
        );
        // Without the FRED SKIP line, the FRED strategies' lines are needed (xAPIC mode).
        let mut fred = text.replace("name=smp-guest-fred", "name=other");
        assert!(
            smp_vmx_problems(&parse(&fred), 2)
                .iter()
                .any(|p| p.contains("no multiple-nmi/fred-self-nmi line for cpu 1 in xapic mode"))
        );
        assert!(
            smp_vmx_problems(&parse(&fred), 2)
                .iter()
                .any(|p| p.contains("no storm-smp/fred-direct-call line for cpu 0"))
        );
        for strategy in FRED_STRATEGIES {
            for name in GUEST_SIDE {
                fred.push_str(&format!(
                    "HVKIT SCENARIO name={name} strategy={strategy} apic=xapic cpu=0 target=1 sent=2 exits=1 handled=1 eois=0 merged=1 lost=0 duplicated=0 insns_per_event=0 result=PASS\n"
                ));
            }
            for cpu in 0..2 {
                fred.push_str(&format!(
                    "HVKIT SCENARIO name=storm-smp strategy={strategy} apic=xapic cpu={cpu} target={cpu} sent=10000 exits=0 handled=10000 eois=0 merged=0 lost=0 duplicated=0 insns_per_event=0 result=PASS\n"
                ));
            }
        }
        assert_eq!(smp_vmx_problems(&parse(&fred), 2), Vec::<String>::new());
        assert!(!smp_vmx_problems(&parse(""), 1).is_empty(), "one CPU must say why it skipped");
        let skipped = "HVKIT SCENARIO name=smp-guest strategy=n/a sent=0 exits=0 handled=0 eois=0 lost=0 duplicated=0 insns_per_event=0 result=SKIP reason=\"one CPU\"\n";
        assert_eq!(smp_vmx_problems(&parse(skipped), 1), Vec::<String>::new());
    }

    #[test]
    fn no_vmx_line() {
        let report = parse(
            "HVKIT NOVMX reason=\"CPUID.1:ECX.VMX[bit 5] = 0: no VMX\"\nHVKIT EXIT status=3\n",
        );
        assert_eq!(report.no_vmx.as_deref(), Some("CPUID.1:ECX.VMX[bit 5] = 0: no VMX"));
        assert_eq!(report.exit_status, Some(3));
    }

    #[test]
    fn no_long_mode_line() {
        let report = parse(
            "HVKIT NOLONGMODE reason=\"CPUID.80000001H:EDX.LM[bit 29] = 0: no long mode\"\r\nHVKIT EXIT status=5\r\n",
        );
        assert_eq!(
            report.no_long_mode.as_deref(),
            Some("CPUID.80000001H:EDX.LM[bit 29] = 0: no long mode")
        );
        assert_eq!(report.no_vmx, None);
        assert_eq!(report.exit_status, Some(5));
        assert!(!problems(&report).is_empty(), "a CPU without long mode is no scenario run");
    }
}
