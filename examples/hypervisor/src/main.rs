//! hvkit example hypervisor: boots from GRUB (Multiboot2), enables VMX, runs a guest and proves,
//! with counters, that host NMIs and interrupts taken while the guest runs are re-delivered
//! exactly once (hvkit-nmi-reinject), and that guest events survive exits during delivery.
#![no_std]
#![no_main]

mod apic;
mod boot;
mod cpu;
mod entry_diff;
mod fred_host;
mod guest;
mod host;
mod port;
mod vmx;

use core::sync::atomic::Ordering;
use hvkit_nmi_reinject::{
    ApicSender, FredDirectCall, FredEretsToSelf, GuestEvent, GuestEventQueue, IdtDirectCall,
    IdtEntry, InjectionContext, IretToSelf, IrqDelivery, NmiQueued, ReflectError, SelfNmi,
    handle_host_event, inject, reflected_exception, reinject_idt_vectoring,
};
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::exit::{BasicExitReason, ExitHead, ExitInfo, ExitInfoOptions};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::{ClearVmcs, GuestRegisters, Vmcs, VmcsAccess, VmxRoot};
use port::status;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("HVKIT panic: {info}");
    port::exit(status::PANIC)
}

/// One scenario line.
struct Line {
    name: &'static str,
    strategy: &'static str,
    sent: u64,
    exits: u64,
    handled: u64,
    eois: u64,
    insns_per_event: u64,
    pass: bool,
    extra: Extra,
}

#[derive(Default)]
struct Extra {
    exit_to_handler: u64,
    exit_to_entry: u64,
    events: u64,
}

struct Summary {
    scenarios: u64,
    passed: u64,
    failed: u64,
    skipped: u64,
    lost: u64,
    duplicated: u64,
}

static mut SUMMARY: Summary =
    Summary { scenarios: 0, passed: 0, failed: 0, skipped: 0, lost: 0, duplicated: 0 };

#[allow(static_mut_refs, reason = "single CPU")]
fn report(line: Line) {
    let lost = line.sent.saturating_sub(line.handled);
    let duplicated = line.handled.saturating_sub(line.sent);
    let pass = line.pass && lost == 0 && duplicated == 0;
    println!(
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
    // SAFETY: single CPU.
    let summary = unsafe { &mut SUMMARY };
    summary.scenarios += 1;
    summary.lost += lost;
    summary.duplicated += duplicated;
    if pass {
        summary.passed += 1;
    } else {
        summary.failed += 1;
    }
}

#[allow(static_mut_refs, reason = "single CPU")]
fn skip(name: &str, reason: &str) {
    println!(
        "HVKIT SCENARIO name={name} strategy=n/a sent=0 exits=0 handled=0 eois=0 lost=0 duplicated=0 insns_per_event=0 result=SKIP reason=\"{reason}\""
    );
    // SAFETY: single CPU.
    let summary = unsafe { &mut SUMMARY };
    summary.scenarios += 1;
    summary.skipped += 1;
}

#[allow(static_mut_refs, reason = "single CPU")]
fn finish() -> ! {
    // SAFETY: single CPU.
    let s = unsafe { &SUMMARY };
    let pass = s.failed == 0 && s.lost == 0 && s.duplicated == 0 && s.passed > 0;
    println!(
        "HVKIT SUMMARY scenarios={} passed={} failed={} skipped={} lost={} duplicated={} result={}",
        s.scenarios,
        s.passed,
        s.failed,
        s.skipped,
        s.lost,
        s.duplicated,
        if pass { "PASS" } else { "FAIL" }
    );
    port::exit(if pass { status::PASS } else { status::FAIL })
}

#[unsafe(no_mangle)]
extern "C" fn kernel_main() -> ! {
    port::serial_init();
    // Mask the 8259 PICs: only the local APIC delivers interrupts here.
    port::outb(0x21, 0xFF);
    port::outb(0xA1, 0xFF);
    println!("HVKIT boot magic={:#x}", boot::magic());
    host::init();
    if let Err(reason) = vmx::detect() {
        println!("HVKIT NOVMX reason=\"{reason}\"");
        port::exit(status::NO_VMX)
    }
    let apic_id = match apic::init() {
        Ok(id) => id,
        Err(error) => {
            println!("HVKIT error: local APIC: {error}");
            port::exit(status::PANIC)
        }
    };
    println!("HVKIT apic id={apic_id} mode=xAPIC base={:#x}", apic::base_address());
    let (vmx, mut root) = match vmx::enable() {
        Ok(enabled) => enabled,
        Err(reason) => {
            println!("HVKIT NOVMX reason=\"{reason}\"");
            port::exit(status::NO_VMX)
        }
    };
    guest::init();
    let eptp = vmx::build_ept(guest::area());
    entry_diff::run(&mut root, &vmx, guest::stack_top(), guest::idt(), eptp);
    let registers = GuestRegisters {
        rdi: apic::base_address(),
        rsi: u64::from(apic_id),
        ..GuestRegisters::default()
    };
    let vcpu = match Vcpu::new(&mut root, vmx::guest_vmcs(&vmx), &vmx, eptp, registers) {
        Ok(vcpu) => vcpu,
        Err(fail) => {
            println!("HVKIT error: VMCS setup: {fail}");
            port::exit(status::FAIL)
        }
    };
    run(&mut root, vcpu, &vmx)
}

/// The example's one virtual CPU: its VMCS (with the launch state) and its registers.
struct Vcpu {
    vmcs: Vmcs,
    registers: GuestRegisters,
}

impl Vcpu {
    /// Takes the region into use on this CPU (VMCLEAR), makes it current and writes the
    /// complete host and guest state.
    fn new(
        root: &mut VmxRoot,
        region: ClearVmcs,
        vmx: &vmx::Vmx,
        eptp: u64,
        registers: GuestRegisters,
    ) -> Result<Self, VmFail> {
        let mut vmcs = root.adopt(region)?;
        let mut active = root.activate(&mut vmcs)?;
        let guest_rip = guest::main as *const () as u64;
        vmx::setup_vmcs(&mut active, vmx, guest_rip, guest::stack_top() - 8, guest::idt(), eptp)?;
        Ok(Self { vmcs, registers })
    }
}

/// Why the EPT-violation scenarios SKIP on a CPU with VMX but no usable EPT.
const NO_EPT: &str = "no EPT (IA32_VMX_PROCBASED_CTLS2 does not allow enable EPT, or no 4-level WB EPT with 2 MiB pages): the scenario needs an EPT violation";

/// Host timer interrupts the timer scenario waits for.
const TIMER_TARGET: u64 = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    DirectCall,
    SelfNmi,
}

impl Strategy {
    fn name(self, fred: bool) -> &'static str {
        match (self, fred) {
            (Self::DirectCall, false) => "direct-call",
            (Self::SelfNmi, false) => "self-nmi",
            (Self::DirectCall, true) => "fred-direct-call",
            (Self::SelfNmi, true) => "fred-self-nmi",
        }
    }
}

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

fn timer_handler(vector: u8) -> Option<IdtEntry> {
    // SAFETY: the host timer entry saves every register it uses, runs on the current stack
    // (no IST) and ends with IRETQ: the direct-call contract.
    (vector == host::TIMER_VECTOR).then(|| unsafe { IdtEntry::from_address(host::timer_entry()) })
}

fn run(root: &mut VmxRoot, mut vcpu: Vcpu, vmx: &vmx::Vmx) -> ! {
    // SAFETY: the host NMI entry is a non-IST gate that preserves every register and ends with
    // IRETQ: the direct-call contract.
    let nmi_entry = unsafe { IdtEntry::from_address(host::nmi_entry()) };
    // SAFETY: re-delivery runs with interrupts disabled at CPL 0.
    let mut direct =
        unsafe { IdtDirectCall::new(nmi_entry, timer_handler as fn(u8) -> Option<IdtEntry>) };
    let sender = ApicSender { apic: apic::second_handle(), max_polls: 1000 };
    // SAFETY: IDT host, interrupts disabled, host NMI handler installed.
    let unblocker = unsafe { IretToSelf::new() };
    let mut self_nmi =
        SelfNmi::new(sender, unblocker, core::hint::spin_loop, &host::HOST_NMI_HANDLED, 1_000_000);
    let red_zone = u64::from(fred_host::FRED_RED_ZONE_UNITS) * 64;
    // SAFETY: used only after the host switched to FRED (CR4.FRED = 1, CPL 0), with the red
    // zone configured in IA32_FRED_CONFIG; the dispatcher leaves RIP/RSP/CS/SS alone.
    let mut fred_direct = unsafe { FredDirectCall::new(fred_host::fred_dispatcher(), red_zone) };
    let fred_sender = ApicSender { apic: apic::second_handle(), max_polls: 1000 };
    // SAFETY: as above.
    let fred_unblocker = unsafe { FredEretsToSelf::new(red_zone) };
    let mut fred_self_nmi = SelfNmi::new(
        fred_sender,
        fred_unblocker,
        core::hint::spin_loop,
        &host::HOST_NMI_HANDLED,
        1_000_000,
    );
    let mut fred_mode = false;
    let mut guest_fred_msrs = fred_host::GuestFredMsrs::default();
    // The guest does not use FRED, so no event data travels with its events.
    let context = InjectionContext::from_capabilities(&vmx.caps, &vmx.controls, false);
    let mut queue = GuestEventQueue::new();
    let mut previous = None;
    let mut strategy = Strategy::DirectCall;
    let mut phase = snapshot();
    let mut armed_page: Option<u64> = None;
    let mut reflected: Option<GuestEvent> = None;

    // The only VMCS this CPU runs from here on: make it current once (VMPTRLD).
    let mut active = match root.activate(&mut vcpu.vmcs) {
        Ok(active) => active,
        Err(fail) => {
            println!("HVKIT error: VMPTRLD: {fail}");
            port::exit(status::FAIL)
        }
    };
    let vmcs = &mut active;
    let registers = &mut vcpu.registers;
    loop {
        // SAFETY: the VMCS holds a complete host and guest state built by `setup_vmcs`;
        // interrupts are disabled; EPT confines the guest.
        let exit = match unsafe { vmcs.run(registers, previous.take()) } {
            Ok(exit) => exit,
            Err(fail) => {
                println!("HVKIT error: VM entry failed: {fail}");
                port::exit(status::FAIL)
            }
        };
        let exit_tsc = cpu::rdtsc();
        // Phase one: only what re-delivery needs (exit reason, interruption information).
        let head = match ExitHead::read(vmcs, &exit) {
            Ok(head) => head,
            Err(fail) => {
                println!("HVKIT error: reading exit information: {fail}");
                port::exit(status::FAIL)
            }
        };
        // First act: re-deliver the host event this exit consumed.
        let host_event = match (strategy, fred_mode) {
            (Strategy::DirectCall, false) => handle_host_event(&mut direct, head, true),
            (Strategy::SelfNmi, false) => handle_host_event(&mut self_nmi, head, true),
            (Strategy::DirectCall, true) => handle_host_event(&mut fred_direct, head, true),
            (Strategy::SelfNmi, true) => handle_host_event(&mut fred_self_nmi, head, true),
        };
        match host_event {
            Ok((event, delivery)) => {
                let handler_tsc = match event {
                    hvkit_nmi_reinject::HostEvent::Nmi => host::HOST_NMI_TSC.load(Ordering::SeqCst),
                    hvkit_nmi_reinject::HostEvent::AcknowledgedIrq(_) => {
                        host::HOST_TIMER_TSC.load(Ordering::SeqCst)
                    }
                    _ => 0,
                };
                if delivery == Some(IrqDelivery::Requeued) {
                    // The interrupt waits in the APIC: let the host take it before re-entry.
                    // Ticks the host takes beyond that one arrived while the host ran: they
                    // never caused an exit, so they are counted as taken directly.
                    let taken = take_requeued_interrupt();
                    phase.host_direct_ticks += taken.saturating_sub(1);
                }
                if handler_tsc > exit_tsc && delivery != Some(IrqDelivery::Requeued) {
                    phase.exit_to_handler += handler_tsc - exit_tsc;
                    phase.handler_samples += 1;
                }
            }
            Err(error) => {
                println!("HVKIT error: host event: {error}");
                phase.reinject_errors += 1;
            }
        }
        // Phase two: the rest of the snapshot, after the host event is re-delivered.
        let info = match head.complete(vmcs, ExitInfoOptions::default()) {
            Ok(info) => info,
            Err(fail) => {
                println!("HVKIT error: reading exit information: {fail}");
                port::exit(status::FAIL)
            }
        };
        let reason = info.reason.basic();
        let mut advance = false;
        match reason {
            BasicExitReason::ExceptionOrNmi if info.interruption_info.is_nmi() => {
                phase.nmi_exits += 1
            }
            BasicExitReason::ExternalInterrupt => phase.timer_exits += 1,
            BasicExitReason::NmiWindow => phase.nmi_window_exits += 1,
            BasicExitReason::ExceptionOrNmi => {
                reflect_exception(&info, &mut reflected);
                phase.reflected += 1;
            }
            BasicExitReason::InterruptWindow => {}
            BasicExitReason::Cpuid => {
                emulate_cpuid(registers);
                phase.other_exits += 1;
                advance = true;
            }
            BasicExitReason::EptViolation => {
                phase.ept_violations += 1;
                let address = info.guest_physical_address.unwrap_or(0);
                match armed_page.take() {
                    Some(page) if address & !0xFFF == page => {
                        vmx::set_page_access(guest::area(), page, 7);
                        vmx::invept_all();
                    }
                    _ => {
                        println!(
                            "HVKIT error: unexpected EPT violation at {address:#x} qualification={:#x}",
                            info.qualification
                        );
                        port::exit(status::FAIL)
                    }
                }
            }
            BasicExitReason::Rdmsr | BasicExitReason::Wrmsr => {
                let write = reason == BasicExitReason::Wrmsr;
                if !guest_fred_msrs.handle_exit(write, registers, vmcs, vmx) {
                    println!("HVKIT error: guest MSR access ecx={:#x}", registers.rcx as u32);
                    port::exit(status::FAIL)
                }
                advance = true;
            }
            BasicExitReason::Vmcall => {
                advance = true;
                phase.other_exits += 1;
                let command = registers.rax;
                let (first, second) = (registers.rbx, registers.rcx);
                match command {
                    guest::call::PING => registers.rbx = first.wrapping_add(1),
                    guest::call::ROUND_TRIPS_END => {
                        vmx::micro_benchmarks(vmcs, &exit, &mut direct);
                        let round_trips = phase.other_exits - 1;
                        report(Line {
                            name: "round-trips",
                            strategy: "n/a",
                            sent: 2000,
                            exits: round_trips,
                            handled: first,
                            eois: 0,
                            insns_per_event: phase.exit_to_entry / phase.entries.max(1),
                            pass: second == 0 && round_trips == 2000,
                            extra: Extra {
                                exit_to_handler: 0,
                                exit_to_entry: phase.exit_to_entry / phase.entries.max(1),
                                events: 0,
                            },
                        });
                        phase = snapshot();
                    }
                    guest::call::TIMER_START => {
                        phase = snapshot();
                        apic::start_timer(50_000);
                    }
                    guest::call::TIMER_POLL => {
                        registers.rax = u64::from(
                            host::HOST_TIMER_HANDLED.load(Ordering::SeqCst) - phase.host_timer
                                >= TIMER_TARGET,
                        );
                        advance = true;
                    }
                    guest::call::TIMER_STOP => {
                        apic::stop_timer();
                        // A last tick may be pending: let the host take it before counting.
                        phase.host_direct_ticks += drain_host_interrupts();
                        let now = snapshot();
                        let handled = now.host_timer - phase.host_timer;
                        let apic = apic::get();
                        use hvkit_apic::LocalApic as _;
                        let clean = !apic.is_in_service(host::TIMER_VECTOR)
                            && !apic.is_requested(host::TIMER_VECTOR);
                        report(Line {
                            name: if fred_mode { "fred-timer-irq" } else { "timer-irq" },
                            strategy: strategy.name(fred_mode),
                            // Every tick reached the host once: through an exit and re-delivery,
                            // or directly while the host ran with interrupts enabled.
                            sent: phase.timer_exits + phase.host_direct_ticks,
                            exits: phase.timer_exits,
                            handled,
                            eois: now.host_eoi - phase.host_eoi,
                            insns_per_event: phase.exit_to_handler / phase.handler_samples.max(1),
                            pass: clean
                                && phase.timer_exits > 0
                                && now.host_eoi - phase.host_eoi == handled
                                && phase.reinject_errors == 0,
                            extra: Extra {
                                exit_to_handler: phase.exit_to_handler
                                    / phase.handler_samples.max(1),
                                exit_to_entry: phase.exit_to_entry / phase.entries.max(1),
                                events: 0,
                            },
                        });
                        phase = snapshot();
                    }
                    guest::call::NMI_BEGIN | guest::call::STRESS_BEGIN => {
                        strategy =
                            if first == 0 { Strategy::DirectCall } else { Strategy::SelfNmi };
                        phase = snapshot();
                        if command == guest::call::STRESS_BEGIN {
                            apic::start_timer(20_000);
                        }
                    }
                    guest::call::NMI_END | guest::call::STRESS_END => {
                        let stress = command == guest::call::STRESS_END;
                        if stress {
                            apic::stop_timer();
                            phase.host_direct_ticks += drain_host_interrupts();
                        }
                        let now = snapshot();
                        let nmi_handled = now.host_nmi - phase.host_nmi;
                        let timer_handled = now.host_timer - phase.host_timer;
                        let sent = first
                            + if stress { phase.timer_exits + phase.host_direct_ticks } else { 0 };
                        let handled = nmi_handled + if stress { timer_handled } else { 0 };
                        let events = sent + phase.other_exits;
                        report(Line {
                            name: match (stress, fred_mode) {
                                (true, _) => "stress",
                                (false, false) => "host-nmi",
                                (false, true) => "fred-host-nmi",
                            },
                            strategy: strategy.name(fred_mode),
                            sent,
                            exits: phase.nmi_exits + phase.timer_exits,
                            handled,
                            eois: now.host_eoi - phase.host_eoi,
                            insns_per_event: phase.exit_to_entry / phase.entries.max(1),
                            pass: phase.nmi_exits == first
                                && phase.reinject_errors == 0
                                && (!stress || events >= 10_000),
                            extra: Extra {
                                exit_to_handler: phase.exit_to_handler
                                    / phase.handler_samples.max(1),
                                exit_to_entry: phase.exit_to_entry / phase.entries.max(1),
                                events,
                            },
                        });
                        strategy = Strategy::DirectCall;
                        phase = snapshot();
                    }
                    guest::call::FORWARD_NMIS => {
                        phase = snapshot();
                        // NMIs latch: with none in service, two are owed (one delivered, one
                        // held pending) and the rest merge, as on hardware.
                        let merged = (0..first)
                            .filter(|_| queue.queue_nmi() == NmiQueued::Merged)
                            .count() as u64;
                        phase.reinjected = first - merged;
                        phase.merged_nmis = merged;
                    }
                    guest::call::IN_NMI_HANDLER => {}
                    guest::call::FORWARD_END => {
                        report(Line {
                            name: "virtual-nmi-window",
                            strategy: "n/a",
                            sent: phase.reinjected,
                            exits: phase.nmi_window_exits,
                            handled: first,
                            eois: 0,
                            insns_per_event: 0,
                            pass: second == 0
                                && phase.nmi_window_exits >= 1
                                && phase.merged_nmis
                                    == (phase.reinjected + phase.merged_nmis).saturating_sub(2)
                                && queue.pending_nmis() == 0,
                            extra: Extra::default(),
                        });
                        phase = snapshot();
                    }
                    guest::call::VECTORING_ARM => {
                        phase = snapshot();
                        if vmx.ept {
                            let page = guest::idt();
                            vmx::set_page_access(guest::area(), page, 0);
                            vmx::invept_all();
                            armed_page = Some(page);
                        }
                        queue.queue_irq(guest::GUEST_IRQ_VECTOR);
                    }
                    guest::call::VECTORING_END if !vmx.ept => {
                        skip("idt-vectoring", NO_EPT);
                        phase = snapshot();
                    }
                    guest::call::VECTORING_END => {
                        report(Line {
                            name: "idt-vectoring",
                            strategy: "n/a",
                            sent: 1,
                            exits: phase.ept_violations,
                            handled: first,
                            eois: 0,
                            insns_per_event: 0,
                            pass: phase.ept_violations == 1 && phase.reinjected == 1,
                            extra: Extra::default(),
                        });
                        phase = snapshot();
                    }
                    guest::call::IRET_BEGIN => {
                        phase = snapshot();
                        queue.queue_nmi();
                    }
                    guest::call::UNMAP_STACK => {
                        if vmx.ept {
                            let rsp = vmcs.read(field::GUEST_RSP).unwrap_or(0);
                            let page = rsp & !0xFFF;
                            vmx::set_page_access(guest::area(), page, 0);
                            vmx::invept_all();
                            armed_page = Some(page);
                        }
                        queue.queue_nmi();
                    }
                    guest::call::IRET_END if !vmx.ept => {
                        skip("nmi-unblocking-iret", NO_EPT);
                        phase = snapshot();
                    }
                    guest::call::IRET_END => {
                        report(Line {
                            name: "nmi-unblocking-iret",
                            strategy: "n/a",
                            sent: 2,
                            exits: phase.ept_violations,
                            handled: first,
                            eois: 0,
                            insns_per_event: 0,
                            pass: second == 0
                                && phase.blocking_restored == 1
                                && phase.ept_violations == 1,
                            extra: Extra::default(),
                        });
                        phase = snapshot();
                    }
                    guest::call::REFLECT_BEGIN => phase = snapshot(),
                    guest::call::REFLECT_END => {
                        let expected = 2 * guest::REFLECTED_EACH;
                        report(Line {
                            name: "exception-reflection",
                            strategy: "n/a",
                            sent: expected,
                            exits: phase.reflected,
                            handled: first,
                            eois: 0,
                            insns_per_event: 0,
                            // Every INT1 and single step exited (#DB is always intercepted),
                            // was reflected once, and each single step reached the guest
                            // handler with DR6.BS set by the hypervisor.
                            pass: phase.reflected == expected && second == guest::REFLECTED_EACH,
                            extra: Extra::default(),
                        });
                        phase = snapshot();
                    }
                    guest::call::NMI_SEND_TIMEOUTS if first != 0 => {
                        println!(
                            "HVKIT error: the guest gave up {first} self-NMI sends (ICR busy)"
                        );
                        port::exit(status::FAIL)
                    }
                    guest::call::NMI_SEND_TIMEOUTS => {}
                    guest::call::FRED_BEGIN => match fred_unavailable(vmx) {
                        Some(reason) => {
                            skip("fred", reason);
                            registers.rax = 0;
                        }
                        None => match fred_host::enable_fred() {
                            Ok(cr4) => {
                                if let Err(fail) = vmcs
                                    .write(field::HOST_CR4, cr4)
                                    .and_then(|()| vmx::refresh_host_fred(vmcs, vmx))
                                {
                                    println!("HVKIT error: HOST_CR4: {fail}");
                                    port::exit(status::FAIL)
                                }
                                println!(
                                    "HVKIT fred host mode on: cr4={cr4:#x} entry={:#x}",
                                    fred_host::HostFredEntry::address()
                                );
                                vmx::check_fred_state(vmcs, "fred-host");
                                fred_mode = true;
                                registers.rax = 1;
                            }
                            Err(error) => {
                                println!("HVKIT error: FRED configuration: {error}");
                                port::exit(status::FAIL)
                            }
                        },
                    },
                    guest::call::FRED_MSR_CHECK => {
                        let isolation = fred_host::msr_isolation(first, vmx);
                        report(Line {
                            name: "fred-msr-isolation",
                            strategy: isolation.strategy,
                            sent: 1,
                            exits: guest_fred_msrs.exits,
                            handled: 1,
                            eois: 0,
                            insns_per_event: 0,
                            pass: isolation.pass,
                            extra: Extra::default(),
                        });
                    }
                    guest::call::NMI_SOURCE => match fred_host::nmi_source_check(fred_mode) {
                        fred_host::NmiSourceOutcome::Skip(reason) => skip("nmi-source", reason),
                        fred_host::NmiSourceOutcome::Ran { sent, handled, expected, seen } => {
                            println!("HVKIT nmi-source expected={expected:#06x} seen={seen:#06x}");
                            report(Line {
                                name: "nmi-source",
                                strategy: "fred-event-data",
                                sent,
                                exits: 0,
                                handled,
                                eois: 0,
                                insns_per_event: 0,
                                pass: seen == expected,
                                extra: Extra::default(),
                            });
                        }
                    },
                    guest::call::DONE => finish(),
                    0xDEAD => {
                        println!("HVKIT error: unexpected exception in the guest");
                        port::exit(status::FAIL)
                    }
                    other => {
                        println!("HVKIT error: unknown hypercall {other}");
                        port::exit(status::FAIL)
                    }
                }
            }
            other => {
                println!(
                    "HVKIT error: unexpected exit {other:?} qualification={:#x}",
                    info.qualification
                );
                port::exit(status::FAIL)
            }
        }
        if advance {
            let rip = vmcs.read(field::GUEST_RIP).unwrap_or(0);
            let _ = vmcs.write(field::GUEST_RIP, rip + u64::from(info.instruction_length));
        }
        match reinject_idt_vectoring(vmcs, &info, &context) {
            Ok(fixups) => {
                phase.reinjected += u64::from(fixups.reinjected.is_some());
                phase.blocking_restored += u64::from(fixups.nmi_blocking_restored);
            }
            Err(error) => {
                println!("HVKIT error: re-injection: {error}");
                port::exit(status::FAIL)
            }
        }
        if let Some(event) = reflected.take()
            && let Err(error) = inject(vmcs, &event, &context)
        {
            println!("HVKIT error: reflecting a guest exception: {error}");
            port::exit(status::FAIL)
        }
        if let Err(error) = queue.prepare_entry(vmcs, &context) {
            println!("HVKIT error: guest event queue: {error}");
            port::exit(status::FAIL)
        }
        phase.exit_to_entry += cpu::rdtsc() - exit_tsc;
        phase.entries += 1;
        previous = Some(exit);
    }
}

/// A guest exception the exception bitmap intercepted (#DB and #AC always are): make the
/// architectural side effects the exit suppressed visible (DR6 for #DB, CR2 for #PF) and keep
/// the event for injection after any IDT-vectoring re-injection.
fn reflect_exception(info: &ExitInfo<'_>, reflected: &mut Option<GuestEvent>) {
    match reflected_exception(info) {
        Ok(exception) => {
            if let Some(debug) = exception.debug {
                // SAFETY: CPL 0; DR6 is not part of the VMCS, so the guest's DR6 is the
                // processor's own while the host does not use debug registers.
                unsafe { cpu::write_dr6(debug.apply_to_dr6(cpu::read_dr6())) };
            }
            if let Some(address) = exception.page_fault_address {
                // SAFETY: the guest's CR2 is the processor's own (not in the VMCS); the host
                // handles no page faults between here and the entry.
                unsafe { cpu::write_cr2(address) };
            }
            *reflected = Some(exception.event);
        }
        // The exception hit the delivery of another event: re-injecting that event retries it.
        Err(ReflectError::DuringEventDelivery { .. }) => {}
        Err(error) => {
            println!("HVKIT error: exception exit: {error}");
            port::exit(status::FAIL)
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
