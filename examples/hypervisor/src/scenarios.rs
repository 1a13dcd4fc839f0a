//! The example's scenarios: the hypercalls the guest makes to start and end each one, the
//! counters kept per phase, and the report lines. The exit sequence itself is in `vcpu.rs`.

use crate::report::{Extra, Line, finish, report, skip};
use crate::strategies::{Strategies, Strategy};
use crate::vcpu::{ExitHandler, Fatal, Guest, Resume};
use crate::{apic, cpu, fred_host, guest, host, println, vmx};
use core::sync::atomic::Ordering;
use hvkit_nmi_reinject::{
    GuestEvent, GuestFixups, HostEvent, HostEventError, IrqDelivery, NmiQueued, ReflectError,
    reflected_exception,
};
use hvkit_vmx_core::exit::{BasicExitReason, ExitInfo, VmExit};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::{GuestRegisters, VmcsAccess as _};

/// Why the EPT-violation scenarios SKIP on a CPU with VMX but no usable EPT.
const NO_EPT: &str = "no EPT (IA32_VMX_PROCBASED_CTLS2 does not allow enable EPT, or no 4-level WB EPT with 2 MiB pages): the scenario needs an EPT violation";

/// Host timer interrupts the timer scenario waits for.
const TIMER_TARGET: u64 = 100;

/// `None` when the host can switch to FRED, else why not.
fn fred_unavailable(vmx: &vmx::Vmx) -> Option<&'static str> {
    let eax = hvkit_fred::config::cpuid_7_1_eax();
    if !hvkit_fred::config::fred_supported(eax) {
        Some("CPU has no FRED (CPUID.(7,1):EAX[17]=0)")
    } else if vmx.caps.cr4.fixed1 & hvkit_fred::config::CR4_FRED == 0 {
        Some("IA32_VMX_CR4_FIXED1 does not allow CR4.FRED in VMX operation")
    } else {
        None
    }
}

/// Per-phase counters.
#[derive(Default, Clone, Copy)]
struct Counters {
    nmi_exits: u64,
    timer_exits: u64,
    /// Timer ticks the host took while it ran (interrupts enabled), with no exit.
    host_direct_ticks: u64,
    other_exits: u64,
    nmi_window_exits: u64,
    ept_violations: u64,
    reinjected: u64,
    merged_nmis: u64,
    reflected: u64,
    blocking_restored: u64,
    reinject_errors: u64,
    host_nmi: u64,
    host_timer: u64,
    host_eoi: u64,
    exit_to_handler: u64,
    handler_samples: u64,
    exit_to_entry: u64,
    entries: u64,
}

fn snapshot() -> Counters {
    Counters {
        host_nmi: host::HOST_NMI_HANDLED.load(Ordering::SeqCst),
        host_timer: host::HOST_TIMER_HANDLED.load(Ordering::SeqCst),
        host_eoi: host::HOST_TIMER_EOIS.load(Ordering::SeqCst),
        ..Counters::default()
    }
}

/// The VMM side of the example's one vCPU.
pub struct Scenarios<'a> {
    vmx: &'a vmx::Vmx,
    strategies: Strategies,
    phase: Counters,
    /// The guest page made inaccessible in EPT, whose violation the scenario expects.
    armed_page: Option<u64>,
    /// The guest's FRED MSRs (its RDMSR/WRMSR of them exit).
    fred_msrs: fred_host::GuestFredMsrs,
}

impl<'a> Scenarios<'a> {
    pub fn new(vmx: &'a vmx::Vmx) -> Self {
        Self {
            vmx,
            strategies: Strategies::new(),
            phase: snapshot(),
            armed_page: None,
            fred_msrs: fred_host::GuestFredMsrs::default(),
        }
    }

    /// The guest's VMCALL: RAX is the command, RBX and RCX its arguments.
    fn hypercall(&mut self, guest: Guest<'_, '_>, exit: &VmExit) -> Result<(), Fatal> {
        self.phase.other_exits += 1;
        let command = guest.registers.rax;
        let (first, second) = (guest.registers.rbx, guest.registers.rcx);
        match command {
            guest::call::PING => guest.registers.rbx = first.wrapping_add(1),
            guest::call::ROUND_TRIPS_END => {
                vmx::micro_benchmarks(guest.vmcs, exit, self.strategies.direct());
                let round_trips = self.phase.other_exits - 1;
                report(Line {
                    name: "round-trips",
                    strategy: "n/a",
                    sent: 2000,
                    exits: round_trips,
                    handled: first,
                    eois: 0,
                    insns_per_event: self.phase.exit_to_entry / self.phase.entries.max(1),
                    pass: second == 0 && round_trips == 2000,
                    extra: Extra {
                        exit_to_handler: 0,
                        exit_to_entry: self.phase.exit_to_entry / self.phase.entries.max(1),
                        events: 0,
                    },
                });
                self.phase = snapshot();
            }
            guest::call::TIMER_START => {
                self.phase = snapshot();
                apic::start_timer(50_000);
            }
            guest::call::TIMER_POLL => {
                guest.registers.rax = u64::from(
                    host::HOST_TIMER_HANDLED.load(Ordering::SeqCst) - self.phase.host_timer
                        >= TIMER_TARGET,
                );
            }
            guest::call::TIMER_STOP => {
                apic::stop_timer();
                // A last tick may be pending: let the host take it before counting.
                self.phase.host_direct_ticks += drain_host_interrupts();
                let now = snapshot();
                let handled = now.host_timer - self.phase.host_timer;
                let clean = !apic::is_in_service(host::TIMER_VECTOR)
                    && !apic::is_requested(host::TIMER_VECTOR);
                report(Line {
                    name: if self.strategies.fred() { "fred-timer-irq" } else { "timer-irq" },
                    strategy: self.strategies.name(),
                    // Every tick reached the host once: through an exit and re-delivery,
                    // or directly while the host ran with interrupts enabled.
                    sent: self.phase.timer_exits + self.phase.host_direct_ticks,
                    exits: self.phase.timer_exits,
                    handled,
                    eois: now.host_eoi - self.phase.host_eoi,
                    insns_per_event: self.phase.exit_to_handler / self.phase.handler_samples.max(1),
                    pass: clean
                        && self.phase.timer_exits > 0
                        && now.host_eoi - self.phase.host_eoi == handled
                        && self.phase.reinject_errors == 0,
                    extra: Extra {
                        exit_to_handler: self.phase.exit_to_handler
                            / self.phase.handler_samples.max(1),
                        exit_to_entry: self.phase.exit_to_entry / self.phase.entries.max(1),
                        events: 0,
                    },
                });
                self.phase = snapshot();
            }
            guest::call::NMI_BEGIN | guest::call::STRESS_BEGIN => {
                self.strategies.select(if first == 0 {
                    Strategy::DirectCall
                } else {
                    Strategy::SelfNmi
                });
                self.phase = snapshot();
                if command == guest::call::STRESS_BEGIN {
                    apic::start_timer(20_000);
                }
            }
            guest::call::NMI_END | guest::call::STRESS_END => {
                let stress = command == guest::call::STRESS_END;
                if stress {
                    apic::stop_timer();
                    self.phase.host_direct_ticks += drain_host_interrupts();
                }
                let now = snapshot();
                let nmi_handled = now.host_nmi - self.phase.host_nmi;
                let timer_handled = now.host_timer - self.phase.host_timer;
                let sent = first
                    + if stress {
                        self.phase.timer_exits + self.phase.host_direct_ticks
                    } else {
                        0
                    };
                let handled = nmi_handled + if stress { timer_handled } else { 0 };
                let events = sent + self.phase.other_exits;
                report(Line {
                    name: match (stress, self.strategies.fred()) {
                        (true, _) => "stress",
                        (false, false) => "host-nmi",
                        (false, true) => "fred-host-nmi",
                    },
                    strategy: self.strategies.name(),
                    sent,
                    exits: self.phase.nmi_exits + self.phase.timer_exits,
                    handled,
                    eois: now.host_eoi - self.phase.host_eoi,
                    insns_per_event: self.phase.exit_to_entry / self.phase.entries.max(1),
                    pass: self.phase.nmi_exits == first
                        && self.phase.reinject_errors == 0
                        && (!stress || events >= 10_000),
                    extra: Extra {
                        exit_to_handler: self.phase.exit_to_handler
                            / self.phase.handler_samples.max(1),
                        exit_to_entry: self.phase.exit_to_entry / self.phase.entries.max(1),
                        events,
                    },
                });
                self.strategies.select(Strategy::DirectCall);
                self.phase = snapshot();
            }
            guest::call::FORWARD_NMIS => {
                self.phase = snapshot();
                // NMIs latch: with none in service, two are owed (one delivered, one
                // held pending) and the rest merge, as on hardware.
                let merged = (0..first)
                    .filter(|_| guest.queue.queue_nmi() == NmiQueued::Merged)
                    .count() as u64;
                self.phase.reinjected = first - merged;
                self.phase.merged_nmis = merged;
            }
            guest::call::IN_NMI_HANDLER => {}
            guest::call::FORWARD_END => {
                report(Line {
                    name: "virtual-nmi-window",
                    strategy: "n/a",
                    sent: self.phase.reinjected,
                    exits: self.phase.nmi_window_exits,
                    handled: first,
                    eois: 0,
                    insns_per_event: 0,
                    pass: second == 0
                        && self.phase.nmi_window_exits >= 1
                        && self.phase.merged_nmis
                            == (self.phase.reinjected + self.phase.merged_nmis).saturating_sub(2)
                        && guest.queue.pending_nmis() == 0,
                    extra: Extra::default(),
                });
                self.phase = snapshot();
            }
            guest::call::VECTORING_ARM => {
                self.phase = snapshot();
                if self.vmx.ept {
                    let page = guest::idt();
                    vmx::set_page_access(guest::area(), page, 0);
                    vmx::invept_all();
                    self.armed_page = Some(page);
                }
                guest.queue.queue_irq(guest::GUEST_IRQ_VECTOR);
            }
            guest::call::VECTORING_END if !self.vmx.ept => {
                skip("idt-vectoring", NO_EPT);
                self.phase = snapshot();
            }
            guest::call::VECTORING_END => {
                report(Line {
                    name: "idt-vectoring",
                    strategy: "n/a",
                    sent: 1,
                    exits: self.phase.ept_violations,
                    handled: first,
                    eois: 0,
                    insns_per_event: 0,
                    pass: self.phase.ept_violations == 1 && self.phase.reinjected == 1,
                    extra: Extra::default(),
                });
                self.phase = snapshot();
            }
            guest::call::IRET_BEGIN => {
                self.phase = snapshot();
                guest.queue.queue_nmi();
            }
            guest::call::UNMAP_STACK => {
                if self.vmx.ept {
                    let rsp = guest.vmcs.read(field::GUEST_RSP).unwrap_or(0);
                    let page = rsp & !0xFFF;
                    vmx::set_page_access(guest::area(), page, 0);
                    vmx::invept_all();
                    self.armed_page = Some(page);
                }
                guest.queue.queue_nmi();
            }
            guest::call::IRET_END if !self.vmx.ept => {
                skip("nmi-unblocking-iret", NO_EPT);
                self.phase = snapshot();
            }
            guest::call::IRET_END => {
                report(Line {
                    name: "nmi-unblocking-iret",
                    strategy: "n/a",
                    sent: 2,
                    exits: self.phase.ept_violations,
                    handled: first,
                    eois: 0,
                    insns_per_event: 0,
                    pass: second == 0
                        && self.phase.blocking_restored == 1
                        && self.phase.ept_violations == 1,
                    extra: Extra::default(),
                });
                self.phase = snapshot();
            }
            guest::call::REFLECT_BEGIN => self.phase = snapshot(),
            guest::call::REFLECT_END => {
                let expected = 2 * guest::REFLECTED_EACH;
                report(Line {
                    name: "exception-reflection",
                    strategy: "n/a",
                    sent: expected,
                    exits: self.phase.reflected,
                    handled: first,
                    eois: 0,
                    insns_per_event: 0,
                    // Every INT1 and single step exited (#DB is always intercepted),
                    // was reflected once, and each single step reached the guest
                    // handler with DR6.BS set by the hypervisor.
                    pass: self.phase.reflected == expected && second == guest::REFLECTED_EACH,
                    extra: Extra::default(),
                });
                self.phase = snapshot();
            }
            guest::call::NMI_SEND_TIMEOUTS if first != 0 => {
                println!("HVKIT error: the guest gave up {first} self-NMI sends (ICR busy)");
                return Err(Fatal::Vmm("hypercall"));
            }
            guest::call::NMI_SEND_TIMEOUTS => {}
            guest::call::FRED_BEGIN => match fred_unavailable(self.vmx) {
                Some(reason) => {
                    skip("fred", reason);
                    guest.registers.rax = 0;
                }
                None => match fred_host::enable_fred() {
                    Ok(cr4) => {
                        if let Err(fail) = guest
                            .vmcs
                            .write(field::HOST_CR4, cr4)
                            .and_then(|()| vmx::refresh_host_fred(guest.vmcs, self.vmx))
                        {
                            println!("HVKIT error: HOST_CR4: {fail}");
                            return Err(Fatal::Vmm("hypercall"));
                        }
                        println!(
                            "HVKIT fred host mode on: cr4={cr4:#x} entry={:#x}",
                            fred_host::HostFredEntry::address()
                        );
                        vmx::check_fred_state(guest.vmcs, "fred-host");
                        fred_host::report_eretu_step();
                        self.strategies.use_fred();
                        guest.registers.rax = 1;
                    }
                    Err(error) => {
                        println!("HVKIT error: FRED configuration: {error}");
                        return Err(Fatal::Vmm("hypercall"));
                    }
                },
            },
            guest::call::FRED_MSR_CHECK => {
                fred_host::report_msr_isolation(first, guest.vmcs, self.vmx, &self.fred_msrs)
            }
            guest::call::NMI_SOURCE => fred_host::report_nmi_source(self.strategies.fred()),
            guest::call::DONE => finish(),
            0xDEAD => {
                println!("HVKIT error: unexpected exception in the guest");
                return Err(Fatal::Vmm("hypercall"));
            }
            other => {
                println!("HVKIT error: unknown hypercall {other}");
                return Err(Fatal::Vmm("hypercall"));
            }
        }

        Ok(())
    }

    /// An EPT violation: expected only on the page a scenario armed.
    fn ept_violation(&mut self, info: &ExitInfo<'_>) -> Result<(), Fatal> {
        self.phase.ept_violations += 1;
        let address = info.guest_physical_address.unwrap_or(0);
        match self.armed_page.take() {
            Some(page) if address & !0xFFF == page => {
                vmx::set_page_access(guest::area(), page, 7);
                vmx::invept_all();
                Ok(())
            }
            _ => {
                println!(
                    "HVKIT error: unexpected EPT violation at {address:#x} qualification={:#x}",
                    info.qualification
                );
                Err(Fatal::Vmm("unexpected EPT violation"))
            }
        }
    }
}

impl ExitHandler for Scenarios<'_> {
    type Strategy = Strategies;

    fn strategy(&mut self) -> &mut Strategies {
        &mut self.strategies
    }

    fn settle(&mut self) -> bool {
        self.strategies.settle()
    }

    fn host_event(
        &mut self,
        outcome: Result<(HostEvent, Option<IrqDelivery>), HostEventError>,
        exit_tsc: u64,
    ) {
        let (event, delivery) = match outcome {
            Ok(done) => done,
            Err(error) => {
                println!("HVKIT error: host event: {error}");
                self.phase.reinject_errors += 1;
                return;
            }
        };
        let handler_tsc = match event {
            HostEvent::Nmi => host::HOST_NMI_TSC.load(Ordering::SeqCst),
            HostEvent::AcknowledgedIrq(_) => host::HOST_TIMER_TSC.load(Ordering::SeqCst),
            _ => 0,
        };
        if delivery == Some(IrqDelivery::Requeued) {
            // The interrupt waits in the APIC: let the host take it before re-entry. Ticks the
            // host takes beyond that one arrived while the host ran: they never caused an exit,
            // so they are counted as taken directly.
            let taken = take_requeued_interrupt();
            self.phase.host_direct_ticks += taken.saturating_sub(1);
        } else if handler_tsc > exit_tsc {
            self.phase.exit_to_handler += handler_tsc - exit_tsc;
            self.phase.handler_samples += 1;
        }
    }

    fn handle(
        &mut self,
        guest: Guest<'_, '_>,
        info: &ExitInfo<'_>,
        exit: &VmExit,
    ) -> Result<Resume, Fatal> {
        let mut resume = Resume::default();
        match info.reason.basic() {
            BasicExitReason::ExceptionOrNmi if info.interruption_info.is_nmi() => {
                self.phase.nmi_exits += 1
            }
            BasicExitReason::ExternalInterrupt => self.phase.timer_exits += 1,
            BasicExitReason::NmiWindow => self.phase.nmi_window_exits += 1,
            BasicExitReason::ExceptionOrNmi => {
                resume.reflect = reflect_exception(info)?;
                self.phase.reflected += 1;
            }
            BasicExitReason::InterruptWindow => {}
            BasicExitReason::Cpuid => {
                emulate_cpuid(guest.registers);
                self.phase.other_exits += 1;
                resume.advance_rip = true;
            }
            BasicExitReason::EptViolation => self.ept_violation(info)?,
            reason @ (BasicExitReason::Rdmsr | BasicExitReason::Wrmsr) => {
                let write = reason == BasicExitReason::Wrmsr;
                if !self.fred_msrs.handle_exit(write, guest.registers, guest.vmcs, self.vmx) {
                    println!("HVKIT error: guest MSR access ecx={:#x}", guest.registers.rcx as u32);
                    return Err(Fatal::Vmm("guest MSR access"));
                }
                resume.advance_rip = true;
            }
            BasicExitReason::Vmcall => {
                self.hypercall(guest, exit)?;
                resume.advance_rip = true;
            }
            other => {
                println!(
                    "HVKIT error: unexpected exit {other:?} qualification={:#x}",
                    info.qualification
                );
                return Err(Fatal::Vmm("unexpected exit"));
            }
        }
        Ok(resume)
    }

    fn fixups(&mut self, fixups: GuestFixups) {
        self.phase.reinjected += u64::from(fixups.reinjected.is_some());
        self.phase.blocking_restored += u64::from(fixups.nmi_blocking_restored);
    }

    fn entering(&mut self, exit_tsc: u64) {
        self.phase.exit_to_entry += cpu::rdtsc() - exit_tsc;
        self.phase.entries += 1;
    }
}

/// A guest exception the exception bitmap intercepted (#DB and #AC always are): make the
/// architectural side effects the exit suppressed visible (DR6 for #DB, CR2 for #PF) and return
/// the event to inject after any IDT-vectoring re-injection.
fn reflect_exception(info: &ExitInfo<'_>) -> Result<Option<GuestEvent>, Fatal> {
    match reflected_exception(info) {
        Ok(exception) => {
            if let Some(debug) = exception.debug {
                // SAFETY: CPL 0; DR6 is not part of the VMCS, so the guest's DR6 is the
                // processor's own while the host does not use debug registers.
                unsafe {
                    let dr6 = x86::debugregs::dr6().bits() as u64;
                    x86::debugregs::dr6_write(x86::debugregs::Dr6::from_bits_unchecked(
                        debug.apply_to_dr6(dr6) as usize,
                    ));
                }
            }
            if let Some(address) = exception.page_fault_address {
                // SAFETY: the guest's CR2 is the processor's own (not in the VMCS); the host
                // handles no page faults between here and the entry.
                unsafe { x86::controlregs::cr2_write(address) };
            }
            Ok(Some(exception.event))
        }
        // The exception hit the delivery of another event: re-injecting that event retries it.
        Err(ReflectError::DuringEventDelivery { .. }) => Ok(None),
        Err(error) => {
            println!("HVKIT error: exception exit: {error}");
            Err(Fatal::Vmm("exception exit"))
        }
    }
}

/// Lets pending host interrupts (a last timer tick) reach their handlers.
/// Returns how many timer ticks the host took meanwhile (they reached it without an exit).
fn drain_host_interrupts() -> u64 {
    let before = host::HOST_TIMER_HANDLED.load(Ordering::SeqCst);
    for _ in 0..1000 {
        // SAFETY: the host IDT is loaded; handlers are ready.
        unsafe { core::arch::asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
    }
    host::HOST_TIMER_HANDLED.load(Ordering::SeqCst) - before
}

/// Opens interrupt windows until the re-queued interrupt has reached its handler (bounded: a
/// self-IPI travels through the APIC and may take a while on SMP machines) and returns how many
/// timer ticks the host took in them.
fn take_requeued_interrupt() -> u64 {
    let before = host::HOST_TIMER_HANDLED.load(Ordering::SeqCst);
    for _ in 0..1000 {
        // SAFETY: the host IDT is loaded; handlers are ready.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        if host::HOST_TIMER_HANDLED.load(Ordering::SeqCst) != before {
            break;
        }
    }
    host::HOST_TIMER_HANDLED.load(Ordering::SeqCst) - before
}

fn emulate_cpuid(registers: &mut GuestRegisters) {
    let leaf = registers.rax as u32;
    let subleaf = registers.rcx as u32;
    if leaf == guest::CPUID_LEAF {
        registers.rax = u64::from(subleaf.wrapping_mul(3).wrapping_add(1));
        registers.rbx = 0x6876_6B74;
        registers.rcx = u64::from(!subleaf);
        registers.rdx = 0x1234_5678;
    } else {
        #[allow(unused_unsafe, reason = "__cpuid_count is unsafe on older compilers")]
        // SAFETY: CPUID has no side effects.
        let result = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
        registers.rax = u64::from(result.eax);
        registers.rbx = u64::from(result.ebx);
        registers.rcx = u64::from(result.ecx);
        registers.rdx = u64::from(result.edx);
    }
}
