//! Host-side scenarios that need no VMX: they run on every machine (on QEMU TCG they are all
//! that runs), once per local-APIC mode (xAPIC, then x2APIC where CPUID.1:ECX\[21\] offers it).
//!
//! - `self-ipi`: fixed self-IPIs with interrupts disabled: each shows up in the IRR, is handled
//!   once when interrupts are enabled (in service while its handler runs), gets one EOI, and
//!   leaves ISR and IRR clean (SDM Vol. 3A 12.8.4 "Interrupt Acceptance for Fixed Interrupts").
//! - `self-nmi`: NMIs to the own APIC ID (the self shorthand is not valid for NMIs, SDM Vol. 3A
//!   12.6.1 "Interrupt Command Register"); in xAPIC mode each send waits for the ICR delivery
//!   status to say "idle" (accepted; x2APIC has no delivery status), then for the handler.
//! - `cross-ipi` / `cross-nmi`: fixed IPIs and NMIs from CPU 0 to every other CPU, each
//!   confirmed by the target's per-CPU counter before the next is sent.
//! - `idt-direct-call`: hvkit-nmi-reinject's `IdtDirectCall` into the real host NMI and timer
//!   entries (the path VM exits use), each call +1 on the handler's counter.

use crate::percpu::{self, PerCpu};
use crate::{apic, host, println, smp};
use core::sync::atomic::{AtomicU64, Ordering};
use hvkit_apic::{Destination, FixedTarget, Ipi, Target};
use hvkit_nmi_reinject::{FredDirectCall, IdtDirectCall, IdtEntry, Redeliver};

/// Events per scenario (and per target CPU).
const EVENTS: u64 = 10;

/// Polls for a handler before an event counts as lost.
const WAIT_POLLS: u32 = 10_000_000;

/// One result line.
struct HostLine {
    name: &'static str,
    strategy: &'static str,
    target: usize,
    sent: u64,
    handled: u64,
    eois: u64,
    detail: Detail,
    pass: bool,
}

/// Scenario-specific fields.
enum Detail {
    None,
    /// Self-IPI: how many sends were seen pending in the IRR before interrupts were enabled,
    /// and whether ISR and IRR were clean at the end.
    Irr {
        seen: u64,
        clean: bool,
    },
    /// Self-NMI: sends whose delivery status said "accepted" (xAPIC), or that there is none.
    Delivery {
        confirmed: u64,
        x2apic: bool,
    },
    /// Cross-CPU fixed IPIs: handler runs that found their vector not in service, and whether
    /// the target's ISR and IRR were clean at the end.
    Target {
        not_in_service: u64,
        clean: bool,
    },
}

fn report(line: HostLine) {
    let lost = line.sent.saturating_sub(line.handled);
    let duplicated = line.handled.saturating_sub(line.sent);
    let pass = line.pass && lost == 0 && duplicated == 0;
    let mode = apic::mode_name();
    let result = if pass { "PASS" } else { "FAIL" };
    let (a, b) = match line.detail {
        Detail::None => ("", 0),
        Detail::Irr { seen, clean } => {
            if clean {
                ("irr_seen", seen)
            } else {
                ("irr_seen_isr_irr_not_clean", seen)
            }
        }
        Detail::Delivery { confirmed, x2apic: false } => ("delivery_confirmed", confirmed),
        Detail::Delivery { x2apic: true, .. } => ("delivery_status_none_x2apic", 0),
        Detail::Target { not_in_service, clean } => {
            if clean {
                ("not_in_service", not_in_service)
            } else {
                ("not_in_service_isr_irr_not_clean", not_in_service)
            }
        }
    };
    let target_apic = percpu::cpu(line.target).map_or(0, |cpu| cpu.apic_id.load(Ordering::SeqCst));
    if a.is_empty() {
        println!(
            "HVKIT SCENARIO name={} strategy={} apic={mode} cpu=0 target={} target_apic_id={target_apic} sent={} exits=0 handled={} eois={} lost={lost} duplicated={duplicated} insns_per_event=0 result={result}",
            line.name, line.strategy, line.target, line.sent, line.handled, line.eois
        );
    } else {
        println!(
            "HVKIT SCENARIO name={} strategy={} apic={mode} cpu=0 target={} target_apic_id={target_apic} sent={} exits=0 handled={} eois={} lost={lost} duplicated={duplicated} insns_per_event=0 {a}={b} result={result}",
            line.name, line.strategy, line.target, line.sent, line.handled, line.eois
        );
    }
    crate::report::tally(pass, lost, duplicated);
}

/// Waits (bounded) until `counter` exceeds `before`.
fn wait_above(counter: &AtomicU64, before: u64) -> bool {
    for _ in 0..WAIT_POLLS {
        if counter.load(Ordering::SeqCst) > before {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Opens interrupt windows (one instruction each) until `counter` exceeds `before`.
fn take_interrupts_until(counter: &AtomicU64, before: u64) -> bool {
    for _ in 0..WAIT_POLLS / 100 {
        // SAFETY: the host IDT and handlers are set up; interrupts are off again afterwards.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        if counter.load(Ordering::SeqCst) > before {
            return true;
        }
    }
    false
}

fn self_ipi(cpu: &PerCpu) {
    let vector = host::TEST_IPI_VECTOR;
    let (handled0, eois0) =
        (cpu.ipi_handled.load(Ordering::SeqCst), cpu.ipi_eois.load(Ordering::SeqCst));
    let not_in_service0 = cpu.ipi_not_in_service.load(Ordering::SeqCst);
    let mut sent = 0;
    let mut seen = 0;
    for _ in 0..EVENTS {
        let before = cpu.ipi_handled.load(Ordering::SeqCst);
        if apic::send_self_ipi(vector).is_err() {
            break;
        }
        sent += 1;
        // Interrupts are disabled: the IPI waits in the IRR.
        if (0..10_000).any(|_| apic::is_requested(vector)) {
            seen += 1;
        }
        if !take_interrupts_until(&cpu.ipi_handled, before) {
            break;
        }
    }
    let clean = !apic::is_in_service(vector) && !apic::is_requested(vector);
    let handled = cpu.ipi_handled.load(Ordering::SeqCst) - handled0;
    let eois = cpu.ipi_eois.load(Ordering::SeqCst) - eois0;
    let not_in_service = cpu.ipi_not_in_service.load(Ordering::SeqCst) - not_in_service0;
    report(HostLine {
        name: "self-ipi",
        strategy: "n/a",
        target: 0,
        sent,
        handled,
        eois,
        detail: Detail::Irr { seen, clean },
        pass: sent == EVENTS && seen == sent && eois == handled && clean && not_in_service == 0,
    });
}

fn self_nmi(cpu: &PerCpu) {
    let x2apic = cpu.x2apic.load(Ordering::SeqCst);
    let handled0 = cpu.nmi_handled.load(Ordering::SeqCst);
    let mut sent = 0;
    let mut confirmed = 0;
    for _ in 0..EVENTS {
        let before = cpu.nmi_handled.load(Ordering::SeqCst);
        match apic::send_self_nmi() {
            // xAPIC: `Ok` only after the delivery status went back to idle.
            Ok(()) => {
                sent += 1;
                confirmed += u64::from(!x2apic);
            }
            Err(error) => {
                println!("HVKIT error: self-NMI: {error}");
                break;
            }
        }
        if !wait_above(&cpu.nmi_handled, before) {
            break;
        }
    }
    let handled = cpu.nmi_handled.load(Ordering::SeqCst) - handled0;
    report(HostLine {
        name: "self-nmi",
        strategy: "n/a",
        target: 0,
        sent,
        handled,
        eois: 0,
        detail: Detail::Delivery { confirmed, x2apic },
        pass: sent == EVENTS && (x2apic || confirmed == sent),
    });
}

fn cross(target_index: usize, nmi: bool) {
    let Some(target) = percpu::cpu(target_index) else { return };
    let destination = Destination::Physical(target.apic_id.load(Ordering::SeqCst));
    // A fixed IPI is confirmed by the handler's EOI count (its last step), an NMI by the NMI
    // handler's count.
    let counter = if nmi { &target.nmi_handled } else { &target.ipi_eois };
    let handled_counter = if nmi { &target.nmi_handled } else { &target.ipi_handled };
    let handled0 = handled_counter.load(Ordering::SeqCst);
    let eois0 = target.ipi_eois.load(Ordering::SeqCst);
    let not_in_service0 = target.ipi_not_in_service.load(Ordering::SeqCst);
    let ipi = if nmi {
        Ok(Ipi::nmi(Target::To(destination)))
    } else {
        Ipi::fixed(host::TEST_IPI_VECTOR, FixedTarget::To(destination))
    };
    let Ok(ipi) = ipi else { return };
    let mut sent = 0;
    for _ in 0..EVENTS {
        let before = counter.load(Ordering::SeqCst);
        if let Err(error) = apic::send(&ipi) {
            println!("HVKIT error: IPI to cpu {target_index}: {error}");
            break;
        }
        sent += 1;
        if !wait_above(counter, before) {
            break;
        }
    }
    let handled = handled_counter.load(Ordering::SeqCst) - handled0;
    let eois = target.ipi_eois.load(Ordering::SeqCst) - eois0;
    let not_in_service = target.ipi_not_in_service.load(Ordering::SeqCst) - not_in_service0;
    let clean = nmi
        || (smp::run_on(target_index, smp::command::CHECK_CLEAN)
            && target.last_result.load(Ordering::SeqCst) == 1);
    report(HostLine {
        name: if nmi { "cross-nmi" } else { "cross-ipi" },
        strategy: "n/a",
        target: target_index,
        sent,
        handled,
        eois,
        detail: if nmi { Detail::None } else { Detail::Target { not_in_service, clean } },
        pass: sent == EVENTS && (nmi || (eois == handled && not_in_service == 0 && clean)),
    });
}

fn timer_handler(vector: u8) -> Option<IdtEntry> {
    // SAFETY: the host timer entry saves every register it uses, runs on the current stack
    // (no IST) and ends with IRETQ: the direct-call contract.
    (vector == host::TIMER_VECTOR).then(|| unsafe { IdtEntry::from_address(host::timer_entry()) })
}

/// The direct call this CPU's host uses: an IDT frame, or a FRED frame once the bootstrap
/// processor has switched to FRED (after its VMX scenarios).
enum Direct {
    Idt(IdtDirectCall<fn(u8) -> Option<IdtEntry>>),
    Fred(FredDirectCall),
}

impl Direct {
    fn for_this_host() -> Self {
        if crate::fred_host::host_in_fred_mode() {
            let red_zone = u64::from(crate::fred_host::FRED_RED_ZONE_UNITS) * 64;
            // SAFETY: the host is in FRED mode (CR4.FRED = 1, CPL 0) with this red zone; the
            // dispatcher leaves RIP/RSP/CS/SS alone.
            Self::Fred(unsafe {
                FredDirectCall::new(crate::fred_host::fred_dispatcher(), red_zone)
            })
        } else {
            // SAFETY: the host NMI entry is a non-IST gate that preserves every register and
            // ends with IRETQ: the direct-call contract.
            let nmi_entry = unsafe { IdtEntry::from_address(host::nmi_entry()) };
            // SAFETY: called with interrupts disabled at CPL 0.
            Self::Idt(unsafe {
                IdtDirectCall::new(nmi_entry, timer_handler as fn(u8) -> Option<IdtEntry>)
            })
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Idt(_) => "direct-call",
            Self::Fred(_) => "fred-direct-call",
        }
    }

    fn redeliver_nmi(&mut self) -> Result<(), hvkit_nmi_reinject::RedeliveryError> {
        match self {
            Self::Idt(direct) => direct.redeliver_nmi(),
            Self::Fred(direct) => direct.redeliver_nmi(),
        }
    }

    fn redeliver_irq(&mut self, vector: u8) -> Result<(), hvkit_nmi_reinject::RedeliveryError> {
        match self {
            Self::Idt(direct) => direct.redeliver_irq(vector).map(|_| ()),
            Self::Fred(direct) => direct.redeliver_irq(vector).map(|_| ()),
        }
    }
}

fn direct_call(cpu: &PerCpu) {
    let mut direct = Direct::for_this_host();
    let nmi0 = cpu.nmi_handled.load(Ordering::SeqCst);
    let timer0 = cpu.timer_handled.load(Ordering::SeqCst);
    let eois0 = cpu.timer_eois.load(Ordering::SeqCst);
    let mut sent = 0;
    let mut in_step = true;
    for _ in 0..EVENTS {
        let (nmi_before, timer_before) =
            (cpu.nmi_handled.load(Ordering::SeqCst), cpu.timer_handled.load(Ordering::SeqCst));
        let nmi = direct.redeliver_nmi();
        let irq = direct.redeliver_irq(host::TIMER_VECTOR);
        if nmi.is_err() || irq.is_err() {
            break;
        }
        sent += 2;
        // Each call ran its handler exactly once, before it returned.
        in_step &= cpu.nmi_handled.load(Ordering::SeqCst) == nmi_before + 1
            && cpu.timer_handled.load(Ordering::SeqCst) == timer_before + 1;
    }
    let nmis = cpu.nmi_handled.load(Ordering::SeqCst) - nmi0;
    let timers = cpu.timer_handled.load(Ordering::SeqCst) - timer0;
    report(HostLine {
        name: "idt-direct-call",
        strategy: direct.name(),
        target: 0,
        sent,
        handled: nmis + timers,
        // The timer handler's EOIs (no vector is in service for a direct call without a VM
        // exit's acknowledgement: the EOI has nothing to clear).
        eois: cpu.timer_eois.load(Ordering::SeqCst) - eois0,
        detail: Detail::None,
        pass: sent == 2 * EVENTS && nmis == EVENTS && timers == EVENTS && in_step,
    });
}

/// Runs every host-side scenario in the current APIC mode, on CPU 0 with interrupts disabled.
pub fn run() {
    let cpu = percpu::current();
    self_ipi(cpu);
    self_nmi(cpu);
    let others: usize =
        percpu::online().filter(|cpu| cpu.index.load(Ordering::SeqCst) != 0).count();
    if others == 0 {
        crate::report::skip(
            "cross-ipi",
            "one CPU: cross-CPU IPIs need a second CPU (QEMU -smp 2, Bochs cpu: count=2)",
        );
        crate::report::skip(
            "cross-nmi",
            "one CPU: cross-CPU NMIs need a second CPU (QEMU -smp 2, Bochs cpu: count=2)",
        );
    }
    for index in 1..percpu::MAX_CPUS {
        if percpu::cpu(index).is_some_and(|cpu| cpu.online.load(Ordering::SeqCst)) {
            cross(index, false);
            cross(index, true);
        }
    }
    direct_call(cpu);
}

/// Switches every CPU to x2APIC mode and runs the host-side scenarios again; SKIPs them with
/// the reason when CPUID does not offer x2APIC.
pub fn run_x2apic() {
    if !apic::x2apic_supported() {
        crate::report::skip("host-side-x2apic", "CPUID.1:ECX[21] = 0: no x2APIC mode");
        return;
    }
    if let Err(error) = apic::switch_to_x2apic() {
        println!("HVKIT error: x2APIC: {error}");
        crate::report::skip(
            "host-side-x2apic",
            "switching the bootstrap processor to x2APIC mode failed",
        );
        return;
    }
    for index in 1..percpu::MAX_CPUS {
        if percpu::cpu(index).is_some_and(|cpu| cpu.online.load(Ordering::SeqCst))
            && !smp::run_on(index, smp::command::SWITCH_X2APIC)
        {
            println!("HVKIT error: cpu {index} did not switch to x2APIC mode");
        }
    }
    smp::report_cpus();
    run();
}
