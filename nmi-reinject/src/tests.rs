//! Invariant tests over exhaustive combinations of exit information, with software backends.

use super::*;
use core::sync::atomic::{AtomicU64, Ordering};
use hvkit_apic::{ApicBase, XApic, fake::FakeXApicRegisters, register};
use hvkit_vmx_core::entry_check::{self, EntryCapabilities, EntryEvent};
use hvkit_vmx_core::event::{
    ActivityState, GuestInterruptibility, InterruptionInfo, InterruptionType,
};
use hvkit_vmx_core::exit::{ExitInfo, ExitInfoParts};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};

/// Counts calls; fails on request.
#[derive(Default)]
struct Counting {
    nmis: u32,
    irqs: std::vec::Vec<u8>,
}

impl Redeliver for Counting {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.nmis += 1;
        Ok(())
    }
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        self.irqs.push(vector);
        Ok(IrqDelivery::Handled)
    }
}

const REASONS: [u32; 12] = [0, 1, 2, 7, 8, 10, 12, 48, 62, 75, 35, 0x8000_0021];
const TYPES: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
const VECTORS: [u32; 6] = [0, 2, 8, 14, 32, 255];

fn interruption_infos() -> std::vec::Vec<u32> {
    let mut all = std::vec![0, 0x7FFF_FFFF];
    for kind in TYPES {
        for vector in VECTORS {
            for extra in [0, 1 << 11, 1 << 12, (1 << 11) | (1 << 12)] {
                all.push(0x8000_0000 | (kind << 8) | vector | extra);
            }
        }
    }
    all
}

fn vectoring_infos() -> std::vec::Vec<u32> {
    let mut all = std::vec![0, 0x0000_0B0E];
    for kind in TYPES {
        for vector in [2, 3, 14, 32] {
            for extra in [0, 1 << 11, 1 << 13] {
                all.push(0x8000_0000 | (kind << 8) | vector | extra);
            }
        }
    }
    all
}

#[test]
fn host_events_are_redelivered_exactly_once() {
    let exit = SoftVmcs::new().complete_exit();
    for reason in REASONS {
        for interruption in interruption_infos() {
            for acknowledge in [false, true] {
                let info = ExitInfo::from_parts(
                    &exit,
                    ExitInfoParts {
                        reason,
                        interruption_info: interruption,
                        ..ExitInfoParts::default()
                    },
                );
                let mut counting = Counting::default();
                let result = handle_host_event(&mut counting, &info, acknowledge);
                let valid = interruption & 0x8000_0000 != 0;
                let kind = (interruption >> 8) & 7;
                let entry_failure = reason & 0x8000_0000 != 0;
                // Independent statement of the rule.
                let host_nmi = !entry_failure && reason == 0 && valid && kind == 2;
                let acked_irq = !entry_failure && reason == 1 && acknowledge && valid;
                assert_eq!(counting.nmis, u32::from(host_nmi), "{reason:#x} {interruption:#x}");
                let expected_irqs: &[u8] =
                    if acked_irq { &[(interruption & 0xFF) as u8] } else { &[] };
                assert_eq!(
                    counting.irqs, expected_irqs,
                    "{reason:#x} {interruption:#x} ack {acknowledge}"
                );
                if !entry_failure && reason == 1 && acknowledge && !valid {
                    assert!(matches!(
                        result,
                        Err(HostEventError::AcknowledgedWithoutVector { .. })
                    ));
                } else {
                    assert!(result.is_ok());
                }
            }
        }
    }
}

/// Independent model of when "NMI unblocking due to IRET" applies (SDM Vol. 3C "Information
/// for VM Exits Due to Vectored Events" and the EPT-violation, PML-full and NOTIFY
/// qualifications).
fn expected_nmi_unblocking(
    reason: u32,
    interruption: u32,
    vectoring: u32,
    qualification: u64,
    vnmi: bool,
) -> bool {
    let entry_failure = reason & 0x8000_0000 != 0;
    let vectoring_valid = vectoring & 0x8000_0000 != 0;
    let from_info = interruption & 0x8000_0000 != 0
        && interruption & (1 << 12) != 0
        && interruption & 0xFF != 8;
    let from_qualification = matches!(reason, 48 | 62 | 75) && qualification & (1 << 12) != 0;
    vnmi && !entry_failure && !vectoring_valid && (from_info || from_qualification)
}

pub(crate) fn guest_vmcs(interruptibility: u32, rflags_if: bool) -> SoftVmcs {
    let mut vmcs = SoftVmcs::new();
    vmcs.write(field::GUEST_CR0, 0x8000_0031).unwrap();
    vmcs.write(field::GUEST_RFLAGS, if rflags_if { 0x202 } else { 0x2 }).unwrap();
    vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, interruptibility).unwrap();
    vmcs
}

pub(crate) fn context(vnmi: bool) -> InjectionContext {
    InjectionContext {
        capabilities: EntryCapabilities::STRICT,
        virtual_nmis: vnmi,
        unrestricted_guest: false,
        primary_controls: InjectionContext::ANY_PRIMARY_CONTROLS,
        injected_event_data: false,
    }
}

#[test]
fn guest_side_rules_hold_for_every_combination() {
    let exit = SoftVmcs::new().complete_exit();
    let mut checked = 0u32;
    for reason in REASONS {
        for interruption in interruption_infos().into_iter().step_by(3) {
            for vectoring in vectoring_infos() {
                for qualification in [0u64, 1 << 12] {
                    for vnmi in [false, true] {
                        for interruptibility in [0u32, 1, 2, 8] {
                            let info = ExitInfo::from_parts(
                                &exit,
                                ExitInfoParts {
                                    reason,
                                    qualification,
                                    interruption_info: interruption,
                                    idt_vectoring_info: vectoring,
                                    idt_vectoring_error_code: 0x1_0004,
                                    instruction_length: 2,
                                    ..ExitInfoParts::default()
                                },
                            );
                            let expect_restore = expected_nmi_unblocking(
                                reason,
                                interruption,
                                vectoring,
                                qualification,
                                vnmi,
                            );
                            assert_eq!(nmi_unblocked_by_iret(&info, vnmi), expect_restore);
                            let mut vmcs = guest_vmcs(interruptibility, true);
                            let result = reinject_idt_vectoring(&mut vmcs, &info, &context(vnmi));
                            let state = vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE).unwrap();
                            let written = vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap();
                            let vectoring_valid = vectoring & 0x8000_0000 != 0;
                            match result {
                                Ok(fixups) => {
                                    assert_eq!(fixups.nmi_blocking_restored, expect_restore);
                                    assert_eq!(fixups.reinjected.is_some(), vectoring_valid);
                                    if vectoring_valid {
                                        // Same type and vector, bit 11 kept, bit 13 dropped
                                        // (no nested-exception support here), valid.
                                        assert_eq!(written, vectoring & 0x8000_0FFF);
                                        let event = fixups.reinjected.unwrap();
                                        if vectoring & (1 << 11) != 0 {
                                            assert_eq!(
                                                vmcs.read(field::VM_ENTRY_EXCEPTION_ERROR_CODE)
                                                    .unwrap(),
                                                0x1_0004
                                            );
                                        }
                                        let kind = (vectoring >> 8) & 7;
                                        assert_eq!(
                                            event.instruction_length,
                                            if (4..=6).contains(&kind) { 2 } else { 0 }
                                        );
                                        if kind == 2 {
                                            assert_eq!(
                                                state & 8,
                                                0,
                                                "re-injected NMI: blocking-by-NMI cleared"
                                            );
                                        }
                                        // What was written passes the validator.
                                        let guest = guest::guest_event_state(&vmcs, &context(vnmi))
                                            .unwrap();
                                        let entry = EntryEvent {
                                            info: InterruptionInfo::from_raw(written),
                                            error_code: event.error_code,
                                            instruction_length: event.instruction_length,
                                        };
                                        entry_check::check(
                                            &entry,
                                            &guest,
                                            &EntryCapabilities::STRICT,
                                        )
                                        .unwrap();
                                    } else {
                                        assert_eq!(written, 0, "nothing injected");
                                    }
                                    if expect_restore && !vectoring_valid {
                                        assert_ne!(state & 8, 0, "blocking-by-NMI restored");
                                    }
                                    checked += 1;
                                }
                                Err(InjectError::EntryCheck(error)) => {
                                    assert!(vectoring_valid, "only injections can be refused");
                                    assert_eq!(written, 0, "{error}: nothing written");
                                }
                                Err(other) => panic!("{other}"),
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn nested_bit_and_event_data_survive_reinjection_with_fred() {
    let exit = SoftVmcs::new().complete_exit();
    let info = ExitInfo::from_parts(
        &exit,
        ExitInfoParts {
            reason: 48,
            idt_vectoring_info: 0x8000_2B0E,
            idt_vectoring_error_code: 2,
            original_event_data: Some(0xDEAD_B000),
            ..ExitInfoParts::default()
        },
    );
    let event = idt_vectoring_event(&info, true).unwrap();
    assert_eq!(event.info.raw(), 0x8000_2B0E);
    assert_eq!(event.event_data, Some(0xDEAD_B000));
    assert_eq!(idt_vectoring_event(&info, false).unwrap().info.raw(), 0x8000_0B0E);
    let mut vmcs = guest_vmcs(0, true);
    let fred = InjectionContext {
        capabilities: EntryCapabilities { nested_exception: true, ..EntryCapabilities::STRICT },
        injected_event_data: true,
        ..context(true)
    };
    reinject_idt_vectoring(&mut vmcs, &info, &fred).unwrap();
    assert_eq!(vmcs.read(field::INJECTED_EVENT_DATA), Ok(0xDEAD_B000));
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_2B0E));
}

#[test]
fn queue_neither_loses_nor_duplicates() {
    // A pseudo-random schedule of queued events and guest states; count what gets injected.
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut queue = GuestEventQueue::new();
    let (mut queued_nmis, mut injected_nmis) = (0u32, 0u32);
    let mut owed = std::collections::BTreeSet::new();
    let mut delivered = std::vec::Vec::new();
    let mut vmcs = guest_vmcs(0, true);
    for _ in 0..20_000 {
        match next() % 4 {
            0 => {
                queue.queue_nmi();
                queued_nmis += 1;
            }
            1 => {
                let vector = 32 + (next() % 224) as u8;
                queue.queue_irq(vector);
                owed.insert(vector);
            }
            _ => {}
        }
        let blocking = [0u32, 1, 2, 8][(next() % 4) as usize];
        let rflags = if next() % 3 == 0 { 0x2 } else { 0x202 };
        let blocking = if rflags == 0x2 && blocking == 1 { 0 } else { blocking };
        vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, blocking).unwrap();
        vmcs.write(field::GUEST_RFLAGS, rflags).unwrap();
        vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0).unwrap();
        let decision = queue.prepare_entry(&mut vmcs, &context(true)).unwrap();
        let controls = vmcs.read(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS).unwrap();
        match decision {
            EntryDecision::Injected(event) if event.info.is_nmi() => {
                injected_nmis += 1;
                assert_eq!(blocking & (1 | 2 | 8), 0, "NMI injected only when unblocked");
            }
            EntryDecision::Injected(event) => {
                let vector = event.info.vector();
                assert!(owed.remove(&vector), "vector {vector} injected once");
                delivered.push(vector);
                assert_eq!(rflags, 0x202);
            }
            EntryDecision::WindowRequested
            | EntryDecision::Idle
            | EntryDecision::Deferred
            | EntryDecision::AlreadyPending => {}
        }
        assert_eq!(
            u64::from(injected_nmis) + u64::from(queue.pending_nmis()) + queue.merged_nmis(),
            u64::from(queued_nmis),
            "every queued NMI is injected, owed or merged"
        );
        assert!(queue.pending_nmis() <= 2, "NMI latching bound");
        // An NMI held back by STI blocking alone waits for the interrupt window instead (the
        // NMI window may open at once under STI blocking on some processors).
        let nmi_waits_for_sti = queue.pending_nmis() > 0 && blocking == 1;
        assert_eq!(
            controls & (1 << 22) != 0,
            queue.pending_nmis() > 0 && !nmi_waits_for_sti,
            "NMI window iff NMIs owed (outside STI blocking)"
        );
        assert_eq!(
            controls & (1 << 2) != 0,
            queue.highest_irq().is_some() || nmi_waits_for_sti,
            "IRQ window iff IRQs owed or an NMI waits for the STI shadow"
        );
    }
    // Drain: with the guest open, everything still owed comes out exactly once.
    let mut open = guest_vmcs(0, true);
    loop {
        open.write(field::VM_ENTRY_INTERRUPTION_INFO, 0).unwrap();
        match queue.prepare_entry(&mut open, &context(true)).unwrap() {
            EntryDecision::Injected(event) if event.info.is_nmi() => injected_nmis += 1,
            EntryDecision::Injected(event) => {
                let vector = event.info.vector();
                assert!(owed.remove(&vector), "vector {vector} injected once");
                delivered.push(vector);
            }
            EntryDecision::Idle => break,
            other => panic!("open guest: {other:?}"),
        }
    }
    assert_eq!(
        u64::from(injected_nmis) + queue.merged_nmis(),
        u64::from(queued_nmis),
        "no NMI lost or duplicated: each one injected or merged"
    );
    assert!(owed.is_empty(), "every queued vector delivered");
    assert!(delivered.len() > 100);
}

#[test]
fn injection_refusals_write_nothing() {
    let mut vmcs = guest_vmcs(8, true); // blocking by NMI, virtual NMIs on
    let error = inject(&mut vmcs, &GuestEvent::nmi(), &context(true)).unwrap_err();
    assert!(
        matches!(error, InjectError::EntryCheck(e) if e.rule == entry_check::EntryRule::VirtualNmiBlocked)
    );
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0));
    let mut vmcs = guest_vmcs(0, false); // IF = 0
    assert!(inject(&mut vmcs, &GuestEvent::external_interrupt(0x30), &context(true)).is_err());
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0));
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::GUEST_ACTIVITY_STATE, ActivityState::WaitForSipi.raw()).unwrap();
    assert!(inject(&mut vmcs, &GuestEvent::nmi(), &context(false)).is_err());
    // A second injection on top of a pending one is refused.
    let mut vmcs = guest_vmcs(0, true);
    inject(&mut vmcs, &GuestEvent::external_interrupt(0x30), &context(true)).unwrap();
    assert!(matches!(
        inject(&mut vmcs, &GuestEvent::nmi(), &context(true)),
        Err(InjectError::AlreadyPending { .. })
    ));
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_0030));
    let _ = (InterruptionType::Nmi, GuestInterruptibility::NMI);
}

/// A fake APIC side for self-NMI: the "NMI" reaches the handler (bumps the counter) only after
/// `latency` polls; polls are counted through the delay.
struct FakeSender<'a> {
    handled: &'a AtomicU64,
    latency: Option<u32>,
    log: std::vec::Vec<&'static str>,
    level: bool,
    /// The error `send_self_nmi` returns instead of sending (`None`: it sends).
    send_error: Option<hvkit_apic::IpiError>,
}

impl<'a> FakeSender<'a> {
    /// An edge-triggering sender whose NMIs never reach the handler on their own.
    fn new(handled: &'a AtomicU64) -> Self {
        Self { handled, latency: None, log: std::vec::Vec::new(), level: false, send_error: None }
    }
}

impl LocalApicPort for FakeSender<'_> {
    fn send_self_nmi(&mut self) -> Result<(), hvkit_apic::IpiError> {
        if let Some(error) = self.send_error {
            return Err(error);
        }
        self.log.push("nmi");
        if self.latency == Some(0) {
            self.handled.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn send_self_ipi(&mut self, _vector: u8) -> Result<(), hvkit_apic::IpiError> {
        self.log.push("ipi");
        Ok(())
    }
    fn is_level_triggered(&self, _vector: u8) -> bool {
        self.level
    }
    fn eoi(&mut self) {
        self.log.push("eoi");
    }
}

struct Unblock<'a>(&'a std::cell::Cell<u32>);
impl NmiUnblocker for Unblock<'_> {
    fn unblock_nmis(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn self_nmi_waits_for_the_handler_within_the_bound() {
    for latency in [0u32, 1, 4, 5, 6, 50] {
        let bound = 5;
        let handled = AtomicU64::new(7);
        let polls = std::cell::Cell::new(0);
        let unblocks = std::cell::Cell::new(0);
        let sender = FakeSender { latency: Some(latency), ..FakeSender::new(&handled) };
        let delay = || {
            polls.set(polls.get() + 1);
            if polls.get() == latency {
                handled.fetch_add(1, Ordering::SeqCst);
            }
        };
        let mut strategy = SelfNmi::new(sender, Unblock(&unblocks), delay, &handled, bound);
        let result = strategy.redeliver_nmi();
        assert_eq!(unblocks.get(), 1, "NMIs unblocked once");
        if latency < bound {
            assert_eq!(result, Ok(()), "latency {latency}");
            assert_eq!(handled.load(Ordering::SeqCst), 8, "Ok only after the counter moved");
            assert_eq!(polls.get(), latency, "stopped polling once handled");
        } else {
            assert_eq!(
                result,
                Err(RedeliveryError::NmiNotHandled { polls: bound }),
                "latency {latency}"
            );
            assert_eq!(result.unwrap_err().state(), EventState::InFlight);
            assert_eq!(polls.get(), bound, "exactly the bound");
        }
    }
}

#[test]
fn self_nmi_in_flight_is_waited_for_without_a_second_send() {
    let handled = AtomicU64::new(7);
    let unblocks = std::cell::Cell::new(0);
    let polls = std::cell::Cell::new(0);
    let sender = FakeSender::new(&handled);
    let delay = || polls.set(polls.get() + 1);
    let mut strategy = SelfNmi::new(sender, Unblock(&unblocks), delay, &handled, 3);
    assert_eq!(strategy.in_flight(), None);
    assert_eq!(strategy.poll_in_flight(), Ok(()), "nothing in flight: nothing to wait for");
    assert_eq!(polls.get(), 0);
    assert_eq!(strategy.redeliver_nmi(), Err(RedeliveryError::NmiNotHandled { polls: 3 }));
    assert_eq!(strategy.in_flight(), Some(7), "the counter value before the send");
    // Still not handled: another bounded wait, nothing sent or unblocked again.
    assert_eq!(strategy.poll_in_flight(), Err(RedeliveryError::NmiNotHandled { polls: 3 }));
    assert_eq!(polls.get(), 6);
    assert_eq!(strategy.in_flight(), Some(7));
    // The handler runs: the next poll succeeds at once and nothing is in flight any more.
    handled.fetch_add(1, Ordering::SeqCst);
    assert_eq!(strategy.poll_in_flight(), Ok(()));
    assert_eq!(polls.get(), 6, "no delay once the counter moved");
    assert_eq!(strategy.in_flight(), None);
    assert_eq!(strategy.apic_mut().log, ["nmi"], "one send in all");
    assert_eq!(unblocks.get(), 1, "one unblock in all");
    // A later NMI that is handled in time leaves nothing in flight either.
    strategy.apic_mut().latency = Some(0);
    assert_eq!(strategy.redeliver_nmi(), Ok(()));
    assert_eq!(strategy.in_flight(), None);
}

#[test]
fn after_irq_hook_runs_once_per_redelivered_interrupt_only() {
    let handled = AtomicU64::new(0);
    let unblocks = std::cell::Cell::new(0);
    let seen = std::cell::RefCell::new(std::vec::Vec::new());
    let sender = FakeSender { latency: Some(0), ..FakeSender::new(&handled) };
    let inner = SelfNmi::new(sender, Unblock(&unblocks), || {}, &handled, 3);
    let mut strategy =
        AfterIrqHook::new(inner, |vector, delivery| seen.borrow_mut().push((vector, delivery)));
    assert_eq!(strategy.redeliver_irq(0xEC), Ok(IrqDelivery::Requeued));
    assert_eq!(*seen.borrow(), [(0xEC, IrqDelivery::Requeued)]);
    assert_eq!(strategy.strategy.apic_mut().log, ["ipi", "eoi"], "hook after the EOI");
    // A refused vector: no hook.
    assert!(strategy.redeliver_irq(8).is_err());
    assert_eq!(seen.borrow().len(), 1);
    // NMIs pass through without the hook.
    assert_eq!(strategy.redeliver_nmi(), Ok(()));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert_eq!(seen.borrow().len(), 1);
}

#[test]
fn self_nmi_send_failure_is_not_delivered_and_does_not_unblock() {
    let handled = AtomicU64::new(0);
    let unblocks = std::cell::Cell::new(0);
    let refused = hvkit_apic::IpiError::Timeout { polls: 1, sent: false };
    let sender = FakeSender { send_error: Some(refused), ..FakeSender::new(&handled) };
    let mut strategy = SelfNmi::new(sender, Unblock(&unblocks), || {}, &handled, 10);
    let error = strategy.redeliver_nmi().unwrap_err();
    assert_eq!(error, RedeliveryError::Apic { error: refused, state: EventState::NotDelivered });
    assert_eq!(error.state(), EventState::NotDelivered);
    assert_eq!(unblocks.get(), 0);
}

/// xAPIC ICR (SDM Vol. 3A "Interrupt Command Register (ICR)"): once the ICR low half is
/// written, the IPI is sent; a delivery-status bit still 1 (send pending) after the bound means
/// the APIC has not accepted it yet, not that it is lost. Such a self-NMI is in flight: sending
/// it again would deliver two NMIs for one. Only an IPI never written to the ICR (a previous
/// one still pending, or a refused vector or destination) is still owed.
#[test]
fn self_nmi_written_to_the_icr_but_not_accepted_is_in_flight() {
    let cases = [
        (hvkit_apic::IpiError::Timeout { polls: 3, sent: true }, EventState::InFlight),
        (hvkit_apic::IpiError::Timeout { polls: 3, sent: false }, EventState::NotDelivered),
        (hvkit_apic::IpiError::ReservedVector { vector: 2 }, EventState::NotDelivered),
        (
            hvkit_apic::IpiError::DestinationOutOfRange { destination: 0x100 },
            EventState::NotDelivered,
        ),
    ];
    for (apic_error, state) in cases {
        let handled = AtomicU64::new(0);
        let unblocks = std::cell::Cell::new(0);
        let sender = FakeSender { send_error: Some(apic_error), ..FakeSender::new(&handled) };
        let mut strategy = SelfNmi::new(sender, Unblock(&unblocks), || {}, &handled, 10);
        let error = strategy.redeliver_nmi().unwrap_err();
        assert_eq!(error, RedeliveryError::Apic { error: apic_error, state }, "{apic_error:?}");
        assert_eq!(error.state(), state, "{apic_error:?}");
        assert_eq!(ExitError::from(error).host_event_state(), Some(state), "{apic_error:?}");
    }
}

#[test]
fn self_nmi_irqs_requeue_edge_and_refuse_level() {
    let handled = AtomicU64::new(0);
    let unblocks = std::cell::Cell::new(0);
    let sender = FakeSender::new(&handled);
    let mut strategy = SelfNmi::new(sender, Unblock(&unblocks), || {}, &handled, 10);
    assert_eq!(strategy.redeliver_irq(0xEC), Ok(IrqDelivery::Requeued));
    assert_eq!(strategy.apic_mut().log, ["ipi", "eoi"], "re-queue before EOI");
    assert_eq!(
        strategy.redeliver_irq(8),
        Err(RedeliveryError::Unsupported(Unsupported::ExceptionVector { vector: 8 }))
    );
    strategy.apic_mut().level = true;
    strategy.apic_mut().log.clear();
    let error = strategy.redeliver_irq(0x40).unwrap_err();
    assert_eq!(error, RedeliveryError::Unsupported(Unsupported::LevelTriggered { vector: 0x40 }));
    assert_eq!(error.state(), EventState::NotDelivered);
    assert!(strategy.apic_mut().log.is_empty(), "no EOI for a refused level-triggered vector");
}

#[test]
fn apic_sender_uses_physical_self_nmi_and_orders_ipi_before_eoi() {
    let apic = XApic::new(FakeXApicRegisters::with_id(5), ApicBase(0xFEE0_0900)).unwrap();
    let mut sender = PollingApic { apic, max_polls: 10 };
    sender.send_self_nmi().unwrap();
    assert_eq!(
        sender.apic.registers().writes(),
        &[(register::ICR_HIGH, 0x0500_0000), (register::ICR_LOW, 0x4400)]
    );
    let handled = AtomicU64::new(0);
    let unblocks = std::cell::Cell::new(0);
    let apic = XApic::new(FakeXApicRegisters::with_id(5), ApicBase(0xFEE0_0900)).unwrap();
    let mut strategy =
        SelfNmi::new(PollingApic { apic, max_polls: 10 }, Unblock(&unblocks), || {}, &handled, 3);
    strategy.redeliver_irq(0x31).unwrap();
    assert_eq!(
        strategy.apic_mut().apic.registers().writes(),
        &[(register::ICR_HIGH, 0), (register::ICR_LOW, 0x0004_4031), (register::EOI, 0)]
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn idt_direct_call_refuses_what_it_cannot_deliver() {
    let table: [Option<IdtEntry>; 256] = [None; 256];
    // SAFETY: no entry is ever called: every vector is refused before any call.
    let mut strategy = unsafe { IdtDirectCall::new(IdtEntry::from_address(0), table) };
    assert_eq!(
        strategy.redeliver_irq(0x40),
        Err(RedeliveryError::Unsupported(Unsupported::NoHandler { vector: 0x40 }))
    );
    assert_eq!(
        strategy.redeliver_irq(14),
        Err(RedeliveryError::Unsupported(Unsupported::ExceptionVector { vector: 14 }))
    );
}

/// Records the sources each NMI came with (`None`: the source-less `redeliver_nmi`).
#[derive(Default)]
struct SourceRecording {
    nmis: std::vec::Vec<Option<u16>>,
    irqs: std::vec::Vec<u8>,
    fail: bool,
}

impl Redeliver for SourceRecording {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.nmis.push(None);
        if self.fail { Err(RedeliveryError::NmiNotHandled { polls: 1 }) } else { Ok(()) }
    }
    fn redeliver_nmi_with_sources(
        &mut self,
        sources: hvkit_vmx_core::nmi_source::NmiSourceBitmap,
    ) -> Result<(), RedeliveryError> {
        self.nmis.push(Some(sources.raw()));
        Ok(())
    }
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        self.irqs.push(vector);
        Ok(IrqDelivery::Handled)
    }
}

fn exit_with(
    exit: &hvkit_vmx_core::exit::VmExit,
    reason: u32,
    interruption_info: u32,
) -> ExitInfo<'_> {
    ExitInfo::from_parts(
        exit,
        ExitInfoParts { reason, interruption_info, ..ExitInfoParts::default() },
    )
}

#[test]
fn nmi_sources_travel_with_the_re_delivered_nmi() {
    use crate::handle_host_event_with_nmi_sources as handle;
    use hvkit_vmx_core::nmi_source::NmiSourceBitmap;
    let exit = SoftVmcs::new().complete_exit();
    let sources = NmiSourceBitmap::from_exit_qualification(0xFFFF_0000_0000_0024);
    assert_eq!(sources.raw(), 0x24, "bits 15:0 of the qualification");
    // NMI exit: the strategy gets the bitmap, once.
    let mut strategy = SourceRecording::default();
    let (event, _) =
        handle(&mut strategy, &exit_with(&exit, 0, 0x8000_0202), true, sources).unwrap();
    assert_eq!(event, HostEvent::Nmi);
    assert_eq!(strategy.nmis, [Some(0x24)]);
    // Acknowledged interrupt: re-delivered as usual, no NMI.
    let mut strategy = SourceRecording::default();
    handle(&mut strategy, &exit_with(&exit, 1, 0x8000_0031), true, sources).unwrap();
    assert_eq!((strategy.nmis.len(), strategy.irqs.as_slice()), (0, &[0x31][..]));
    // Through the after-interrupt hook wrapper the sources still reach the strategy.
    let mut hooked = crate::AfterIrqHook::new(SourceRecording::default(), |_, _| {});
    hooked.redeliver_nmi_with_sources(sources).unwrap();
    assert_eq!(hooked.strategy.nmis, [Some(0x24)]);
    // A strategy that does not override the method (Counting) still re-delivers the NMI once.
    let mut counting = Counting::default();
    handle(&mut counting, &exit_with(&exit, 0, 0x8000_0202), true, sources).unwrap();
    assert_eq!(counting.nmis, 1);
}

#[test]
fn nmi_source_slot_holds_the_sources_for_the_idt_nmi_entry() {
    use crate::NmiSourceSlot;
    use core::sync::atomic::AtomicU16;
    use hvkit_vmx_core::nmi_source::NmiSourceBitmap;
    static SLOT: AtomicU16 = AtomicU16::new(0);
    let mut strategy = NmiSourceSlot::new(SourceRecording::default(), &SLOT);
    strategy.redeliver_nmi_with_sources(NmiSourceBitmap::from_raw(0x8006)).unwrap();
    assert_eq!(strategy.strategy.nmis, [None], "the IDT strategy re-delivers it plainly");
    assert_eq!(NmiSourceSlot::<Counting>::take(&SLOT).raw(), 0x8006);
    assert_eq!(NmiSourceSlot::<Counting>::take(&SLOT).raw(), 0, "taken once");
    // A failed re-delivery leaves no sources behind for a later, unrelated NMI.
    strategy.strategy.fail = true;
    assert!(strategy.redeliver_nmi_with_sources(NmiSourceBitmap::from_raw(0x10)).is_err());
    assert_eq!(SLOT.load(core::sync::atomic::Ordering::SeqCst), 0);
    // Plain re-delivery and interrupts pass straight through.
    strategy.strategy.fail = false;
    strategy.redeliver_nmi().unwrap();
    assert_eq!(strategy.redeliver_irq(0x40), Ok(IrqDelivery::Handled));
    assert_eq!(strategy.strategy.irqs, [0x40]);
    assert_eq!(SLOT.load(core::sync::atomic::Ordering::SeqCst), 0);
}

/// Calls of the direct-call test entries: [0] the NMI entry, [1] the interrupt entry.
#[cfg(target_arch = "x86_64")]
static DIRECT_CALLS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

#[cfg(target_arch = "x86_64")]
extern "C" fn direct_nmi_handler(_frame: &crate::InterruptFrame) {
    DIRECT_CALLS[0].fetch_add(1, Ordering::SeqCst);
}

#[cfg(target_arch = "x86_64")]
extern "C" fn direct_irq_handler(_frame: &crate::InterruptFrame) {
    DIRECT_CALLS[1].fetch_add(1, Ordering::SeqCst);
}

#[cfg(target_arch = "x86_64")]
crate::idt_entry_stub! {
    /// The NMI entry the direct-call tests re-deliver to.
    fn direct_nmi_entry => direct_nmi_handler
}

#[cfg(target_arch = "x86_64")]
crate::idt_entry_stub! {
    /// The interrupt entry the direct-call tests re-deliver to.
    fn direct_irq_entry => direct_irq_handler
}

/// Only this test calls the entries (same-privilege IRETQ works at CPL 3 too), so the counts
/// are its own.
#[cfg(target_arch = "x86_64")]
#[test]
fn idt_direct_call_runs_the_entry_once_per_event_from_vector_32_up() {
    let mut table: [Option<IdtEntry>; 256] = [None; 256];
    table[32] = Some(direct_irq_entry());
    table[0xEC] = Some(direct_irq_entry());
    assert_eq!(table.handler(0xEC), Some(direct_irq_entry()), "the array's entry for 0xEC");
    assert_eq!(table.handler(0xED), None);
    // SAFETY: both entries are idt_entry_stub! stubs (direct-call contract), same privilege.
    let mut strategy = unsafe { IdtDirectCall::new(direct_nmi_entry(), table) };
    assert_eq!(strategy.redeliver_nmi(), Ok(()));
    assert_eq!(DIRECT_CALLS[0].load(Ordering::SeqCst), 1, "the NMI entry ran once");
    assert_eq!(DIRECT_CALLS[1].load(Ordering::SeqCst), 0);
    // Vector 32 is the first interrupt vector (0-31 are exceptions, SDM Vol. 3A 6.2).
    assert_eq!(strategy.redeliver_irq(32), Ok(IrqDelivery::Handled));
    assert_eq!(DIRECT_CALLS[1].load(Ordering::SeqCst), 1, "the vector-32 entry ran once");
    assert_eq!(
        strategy.redeliver_irq(31),
        Err(RedeliveryError::Unsupported(Unsupported::ExceptionVector { vector: 31 }))
    );
    // A closure table: its answer is what the strategy calls.
    let lookup = |vector: u8| (vector == 0x50).then(direct_irq_entry);
    assert_eq!(lookup.handler(0x50), Some(direct_irq_entry()));
    // SAFETY: as above.
    let mut strategy = unsafe { IdtDirectCall::new(direct_nmi_entry(), lookup) };
    assert_eq!(strategy.redeliver_irq(0x50), Ok(IrqDelivery::Handled));
    assert_eq!(DIRECT_CALLS[1].load(Ordering::SeqCst), 2, "the closure's entry ran once");
    assert_eq!(
        strategy.redeliver_irq(0x51),
        Err(RedeliveryError::Unsupported(Unsupported::NoHandler { vector: 0x51 }))
    );
    assert_eq!(DIRECT_CALLS[0].load(Ordering::SeqCst), 1);
}

#[test]
fn self_nmi_requeues_from_vector_32_up() {
    let handled = AtomicU64::new(0);
    let unblocks = std::cell::Cell::new(0);
    let mut strategy =
        SelfNmi::new(FakeSender::new(&handled), Unblock(&unblocks), || {}, &handled, 1);
    assert_eq!(strategy.redeliver_irq(32), Ok(IrqDelivery::Requeued));
    assert_eq!(strategy.apic_mut().log, ["ipi", "eoi"]);
    strategy.apic_mut().log.clear();
    assert_eq!(
        strategy.redeliver_irq(31),
        Err(RedeliveryError::Unsupported(Unsupported::ExceptionVector { vector: 31 }))
    );
    assert!(strategy.apic_mut().log.is_empty(), "nothing sent for an exception vector");
}

#[test]
fn apic_sender_reads_the_trigger_mode_from_the_tmr() {
    let mut registers = FakeXApicRegisters::with_id(5);
    // TMR word 2 (vectors 0x40..0x5F), bit 1: vector 0x41 was accepted level-triggered.
    registers.set(register::TMR_BASE + 0x20, 1 << 1);
    let apic = XApic::new(registers, ApicBase(0xFEE0_0900)).unwrap();
    let sender = PollingApic { apic, max_polls: 10 };
    assert!(sender.is_level_triggered(0x41));
    assert!(!sender.is_level_triggered(0x40));
    // Through the self-NMI strategy: the level-triggered vector is refused, the edge one is not.
    let handled = AtomicU64::new(0);
    let unblocks = std::cell::Cell::new(0);
    let mut strategy = SelfNmi::new(sender, Unblock(&unblocks), || {}, &handled, 1);
    assert_eq!(
        strategy.redeliver_irq(0x41),
        Err(RedeliveryError::Unsupported(Unsupported::LevelTriggered { vector: 0x41 }))
    );
    assert_eq!(strategy.redeliver_irq(0x40), Ok(IrqDelivery::Requeued));
}

#[test]
fn nmi_source_slot_passes_plain_nmis_and_their_errors_through() {
    use crate::NmiSourceSlot;
    use core::sync::atomic::AtomicU16;
    static SLOT: AtomicU16 = AtomicU16::new(0);
    let mut strategy = NmiSourceSlot::new(SourceRecording::default(), &SLOT);
    assert_eq!(strategy.redeliver_nmi(), Ok(()));
    assert_eq!(strategy.strategy.nmis, [None], "the wrapped strategy re-delivered it once");
    strategy.strategy.fail = true;
    assert_eq!(strategy.redeliver_nmi(), Err(RedeliveryError::NmiNotHandled { polls: 1 }));
    assert_eq!(strategy.strategy.nmis, [None, None]);
    assert_eq!(SLOT.load(Ordering::SeqCst), 0, "no sources stored for a plain NMI");
}

#[test]
fn host_event_errors_say_what_happened_to_the_event() {
    let missing = HostEventError::AcknowledgedWithoutVector { info: 0x31 };
    assert_eq!(
        std::format!("{missing}"),
        "external-interrupt exit with acknowledge-on-exit but invalid interruption info 0x31; \
         the interrupt is still pending in the APIC"
    );
    let failed = HostEventError::Redelivery {
        event: HostEvent::AcknowledgedIrq(0x40),
        error: RedeliveryError::Unsupported(Unsupported::NoHandler { vector: 0x40 }),
    };
    assert_eq!(
        std::format!("{failed}"),
        "re-delivering AcknowledgedIrq(64): no host handler registered for vector 64; \
         event not delivered"
    );
}

/// Each step's error lands in the `ExitError` variant that names the step, unchanged: a
/// conversion into the wrong variant, or one that rewrites the inner error, fails here.
#[test]
fn exit_error_keeps_each_steps_error_in_its_own_variant() {
    use hvkit_vmx_core::VmFail;
    use hvkit_vmx_core::event::InterruptionInfoError;

    fn question_mark<E>(error: E) -> Result<(), ExitError>
    where
        ExitError: From<E>,
    {
        Err(error)?
    }

    let fail = VmFail::Invalid;
    assert_eq!(question_mark(fail), Err(ExitError::Vmcs(fail)));

    let host = HostEventError::AcknowledgedWithoutVector { info: 0x31 };
    assert_eq!(question_mark(host), Err(ExitError::HostEvent(host)));

    let redelivery = RedeliveryError::NmiNotHandled { polls: 3 };
    assert_eq!(question_mark(redelivery), Err(ExitError::Redelivery(redelivery)));

    // A real injection refusal and a real entry-check failure (the error structs cannot be
    // built outside their crates).
    let mut vmcs = guest_vmcs(8, true); // blocking by NMI, virtual NMIs on
    let inject_error = inject(&mut vmcs, &GuestEvent::nmi(), &context(true)).unwrap_err();
    assert_eq!(question_mark(inject_error), Err(ExitError::Inject(inject_error)));
    let InjectError::EntryCheck(check) = inject_error else {
        panic!("expected an entry-check refusal, got {inject_error:?}");
    };
    assert_eq!(question_mark(check), Err(ExitError::EntryCheck(check)));

    let reflect = ReflectError::NotAnExceptionExit;
    assert_eq!(question_mark(reflect), Err(ExitError::Reflect(reflect)));

    let info = InterruptionInfo::try_new(InterruptionType::Nmi, 3).unwrap_err();
    assert_eq!(info, InterruptionInfoError::NmiVectorNot2 { vector: 3 });
    assert_eq!(question_mark(info), Err(ExitError::InterruptionInfo(info)));
}

#[test]
fn exit_error_says_where_a_host_event_stands() {
    let in_flight = RedeliveryError::NmiNotHandled { polls: 3 };
    let owed = RedeliveryError::Unsupported(Unsupported::NoHandler { vector: 0x40 });
    assert_eq!(ExitError::from(in_flight).host_event_state(), Some(EventState::InFlight));
    assert_eq!(ExitError::from(owed).host_event_state(), Some(EventState::NotDelivered));
    let through_handler = HostEventError::Redelivery { event: HostEvent::Nmi, error: in_flight };
    assert_eq!(ExitError::from(through_handler).host_event_state(), Some(EventState::InFlight));
    let owed_irq =
        HostEventError::Redelivery { event: HostEvent::AcknowledgedIrq(0x40), error: owed };
    assert_eq!(ExitError::from(owed_irq).host_event_state(), Some(EventState::NotDelivered));
    // No re-delivery involved: no host-event state.
    let missing = HostEventError::AcknowledgedWithoutVector { info: 0x31 };
    assert_eq!(ExitError::from(missing).host_event_state(), None);
    assert_eq!(ExitError::from(hvkit_vmx_core::VmFail::Invalid).host_event_state(), None);
    assert_eq!(ExitError::from(ReflectError::NotAnExceptionExit).host_event_state(), None);
}

#[test]
fn exit_error_names_the_step_and_keeps_the_source() {
    use core::error::Error as _;
    let error = ExitError::from(hvkit_vmx_core::VmFail::Invalid);
    assert_eq!(
        std::format!("{error}"),
        "VMX instruction failed: VMfailInvalid (CF=1, no current VMCS)"
    );
    assert_eq!(
        error.source().map(|source| std::format!("{source}")),
        Some(std::string::String::from("VMfailInvalid (CF=1, no current VMCS)"))
    );
    let cases: [(ExitError, &str); 4] = [
        (HostEventError::AcknowledgedWithoutVector { info: 0x31 }.into(), "host event: "),
        (RedeliveryError::NmiNotHandled { polls: 3 }.into(), "host event re-delivery: "),
        (ReflectError::NotAnExceptionExit.into(), "exception reflection: "),
        (
            InterruptionInfo::try_new(InterruptionType::Reserved, 0).unwrap_err().into(),
            "interruption information: ",
        ),
    ];
    for (error, prefix) in cases {
        let text = std::format!("{error}");
        let source = error.source().map(|source| std::format!("{source}")).unwrap_or_default();
        assert_eq!(text, std::format!("{prefix}{source}"), "{error:?}");
    }
    let mut vmcs = guest_vmcs(8, true);
    let inject_error = inject(&mut vmcs, &GuestEvent::nmi(), &context(true)).unwrap_err();
    let InjectError::EntryCheck(check) = inject_error else {
        panic!("expected an entry-check refusal, got {inject_error:?}");
    };
    assert_eq!(
        std::format!("{}", ExitError::from(inject_error)),
        std::format!("guest event injection: {inject_error}")
    );
    assert_eq!(std::format!("{}", ExitError::from(check)), std::format!("VM-entry check: {check}"));
}
