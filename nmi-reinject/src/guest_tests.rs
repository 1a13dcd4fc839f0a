//! Regression tests for the guest-side event logic, each named after the rule it protects.

use crate::guest::{self, *};
use crate::tests::{context, guest_vmcs};
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::caps::{RecordedMsrs, VmxCapabilities, msr};
use hvkit_vmx_core::controls::{self, AllowedControls, ControlRequest, PinBasedControls};
use hvkit_vmx_core::controls::{PrimaryControls, SecondaryControls};
use hvkit_vmx_core::entry_check::{self, EntryCapabilities, EntryEvent, EntryRule};
use hvkit_vmx_core::event::{ActivityState, InterruptionInfo};
use hvkit_vmx_core::exit::{ExitInfo, ExitInfoParts};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};
use std::vec::Vec;

const NMI_WINDOW: u32 = 1 << 22;
const INTERRUPT_WINDOW: u32 = 1 << 2;
const STI: u32 = 1;
const MOV_SS: u32 = 2;
const BLOCKING_BY_NMI: u32 = 8;

/// Every field of the VMCS (full and high access), as a VMREAD sees it, and the
/// VM-instruction error: two snapshots are equal exactly when nothing was written.
fn snapshot(vmcs: &SoftVmcs) -> (Vec<Result<u64, VmFail>>, u32) {
    let probe = vmcs.clone();
    let fields = field::ALL
        .iter()
        .flat_map(|info| [info.encoding, info.encoding | 1])
        .map(|encoding| probe.read_raw(encoding))
        .collect();
    (fields, vmcs.last_instruction_error())
}

fn controls_of(vmcs: &SoftVmcs) -> u32 {
    vmcs.read(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS).unwrap()
}

fn with_activity(mut vmcs: SoftVmcs, activity: ActivityState) -> SoftVmcs {
    vmcs.write(field::GUEST_ACTIVITY_STATE, activity.raw()).unwrap();
    vmcs
}

fn allowing(context: InjectionContext, forbidden: u32) -> InjectionContext {
    let primary_controls = AllowedControls { must_be_one: 0, may_be_one: !forbidden };
    InjectionContext { primary_controls, ..context }
}

fn exit_parts(parts: ExitInfoParts) -> (SoftVmcs, ExitInfoParts) {
    (SoftVmcs::new(), parts)
}

// ---- Defect 1: NMI-window exiting (SDM 26.2.1.1) --------------------------------------------

#[test]
fn nmi_window_exiting_never_without_virtual_nmis_sdm_26_2_1_1() {
    for blocking in [0, STI, MOV_SS, BLOCKING_BY_NMI, STI | BLOCKING_BY_NMI] {
        for rflags_if in [false, true] {
            if blocking & STI != 0 && !rflags_if {
                continue;
            }
            let mut queue = GuestEventQueue::new();
            queue.queue_nmi();
            let mut vmcs = guest_vmcs(blocking, rflags_if);
            let decision = queue.prepare_entry(&mut vmcs, &context(false)).unwrap();
            assert_eq!(controls_of(&vmcs) & NMI_WINDOW, 0, "blocking {blocking:#x} IF {rflags_if}");
            let expected = match blocking {
                0 => EntryDecision::Injected(GuestEvent::nmi()),
                // STI or MOV-SS blocking ends after one instruction: the interrupt window
                // substitutes (it opens once IF = 1 and that blocking ended).
                STI | MOV_SS => EntryDecision::WindowRequested,
                // Blocked by NMI: no window can report the guest's IRET.
                _ => EntryDecision::Deferred,
            };
            assert_eq!(decision, expected, "blocking {blocking:#x} IF {rflags_if}");
            let substitute = matches!(blocking, STI | MOV_SS);
            assert_eq!(controls_of(&vmcs) & INTERRUPT_WINDOW != 0, substitute);
        }
    }
}

#[test]
fn nmi_window_exiting_only_where_allowed_1() {
    let no_nmi_window = allowing(context(true), NMI_WINDOW);
    assert!(!no_nmi_window.nmi_window_usable());
    assert!(context(true).nmi_window_usable());
    assert!(!context(false).nmi_window_usable());
    // Blocked by virtual-NMI blocking, NMI-window exiting not allowed: deferred, nothing set.
    let mut queue = GuestEventQueue::new();
    queue.queue_nmi();
    let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, true);
    assert_eq!(queue.prepare_entry(&mut vmcs, &no_nmi_window), Ok(EntryDecision::Deferred));
    assert_eq!(controls_of(&vmcs), 0);
    assert_eq!(queue.pending_nmis(), 1, "still owed");
    // Same state with the control allowed: the NMI window.
    let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, true);
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::WindowRequested));
    assert_eq!(controls_of(&vmcs), NMI_WINDOW);
    // Blocked by MOV SS only: the interrupt window substitutes.
    let mut vmcs = guest_vmcs(MOV_SS, true);
    assert_eq!(queue.prepare_entry(&mut vmcs, &no_nmi_window), Ok(EntryDecision::WindowRequested));
    assert_eq!(controls_of(&vmcs), INTERRUPT_WINDOW);
    // Interrupt-window exiting not allowed either: deferred.
    let neither = allowing(context(true), NMI_WINDOW | INTERRUPT_WINDOW);
    assert!(!neither.interrupt_window_usable());
    let mut vmcs = guest_vmcs(MOV_SS, true);
    assert_eq!(queue.prepare_entry(&mut vmcs, &neither), Ok(EntryDecision::Deferred));
    assert_eq!(controls_of(&vmcs), 0);
    // An owed interrupt without interrupt-window exiting allowed: deferred, never set.
    let mut queue = GuestEventQueue::new();
    queue.queue_irq(0x30);
    let mut vmcs = guest_vmcs(0, false);
    let no_irq_window = allowing(context(true), INTERRUPT_WINDOW);
    assert_eq!(queue.prepare_entry(&mut vmcs, &no_irq_window), Ok(EntryDecision::Deferred));
    assert_eq!(controls_of(&vmcs), 0);
    let mut vmcs = guest_vmcs(0, false);
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::WindowRequested));
    assert_eq!(controls_of(&vmcs), INTERRUPT_WINDOW);
}

#[test]
fn window_controls_clear_when_nothing_is_owed_and_other_controls_kept() {
    let mut vmcs = guest_vmcs(0, true);
    let others = PrimaryControls::HLT_EXITING.bits();
    vmcs.write(
        field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
        NMI_WINDOW | INTERRUPT_WINDOW | others,
    )
    .unwrap();
    let mut queue = GuestEventQueue::new();
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::Idle));
    assert_eq!(controls_of(&vmcs), others);
}

// ---- Defect 2: interrupt while the NMI is blocked (SDM 25.2) --------------------------------

#[test]
fn interrupt_injected_while_nmi_blocked_by_nmi_sdm_25_2() {
    for vnmi in [true, false] {
        let mut queue = GuestEventQueue::new();
        queue.queue_nmi();
        queue.queue_irq(0x40);
        let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, true);
        let decision = queue.prepare_entry(&mut vmcs, &context(vnmi)).unwrap();
        assert_eq!(decision, EntryDecision::Injected(GuestEvent::external_interrupt(0x40)));
        assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_0040));
        // The NMI window with virtual NMIs; never the interrupt window (it would open at
        // once with IF = 1 and the guest would never reach its IRET).
        let expected = if vnmi { NMI_WINDOW } else { 0 };
        assert_eq!(controls_of(&vmcs), expected, "vnmi {vnmi}");
        assert_eq!((queue.pending_nmis(), queue.highest_irq()), (1, None));
    }
    // With IF = 0 the interrupt waits for the interrupt window, the NMI for the NMI window.
    let mut queue = GuestEventQueue::new();
    queue.queue_nmi();
    queue.queue_irq(0x40);
    let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, false);
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::WindowRequested));
    assert_eq!(controls_of(&vmcs), NMI_WINDOW | INTERRUPT_WINDOW);
    // The NMI goes first when it can be taken.
    let mut vmcs = guest_vmcs(0, true);
    let decision = queue.prepare_entry(&mut vmcs, &context(true)).unwrap();
    assert_eq!(decision, EntryDecision::Injected(GuestEvent::nmi()));
    assert_eq!(controls_of(&vmcs), INTERRUPT_WINDOW, "the interrupt is still owed");
}

// ---- Defect 3: error paths change nothing; activity states ----------------------------------

#[test]
fn reinjection_validates_before_any_write() {
    let exit = SoftVmcs::new().complete_exit();
    // An NMI whose delivery was interrupted, while an injection is already pending.
    let info = ExitInfo::from_parts(
        &exit,
        ExitInfoParts { reason: 48, idt_vectoring_info: 0x8000_0202, ..ExitInfoParts::default() },
    );
    let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, true);
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0x8000_0030).unwrap();
    let before = snapshot(&vmcs);
    let result = reinject_idt_vectoring(&mut vmcs, &info, &context(true));
    assert!(matches!(result, Err(InjectError::AlreadyPending { .. })), "{result:?}");
    assert_eq!(snapshot(&vmcs), before, "blocking by NMI not cleared");
    // An interrupted external interrupt while the guest state refuses it (MOV-SS blocking).
    let info = ExitInfo::from_parts(
        &exit,
        ExitInfoParts { reason: 48, idt_vectoring_info: 0x8000_0030, ..ExitInfoParts::default() },
    );
    let mut vmcs = guest_vmcs(MOV_SS | BLOCKING_BY_NMI, true);
    let before = snapshot(&vmcs);
    let result = reinject_idt_vectoring(&mut vmcs, &info, &context(true));
    assert!(
        matches!(result, Err(InjectError::EntryCheck(e)) if e.rule == EntryRule::ExternalInterruptBlocked)
    );
    assert_eq!(snapshot(&vmcs), before);
    // The success path still clears blocking by NMI for a re-injected NMI.
    let info = ExitInfo::from_parts(
        &exit,
        ExitInfoParts { reason: 48, idt_vectoring_info: 0x8000_0202, ..ExitInfoParts::default() },
    );
    let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, true);
    let fixups = reinject_idt_vectoring(&mut vmcs, &info, &context(true)).unwrap();
    assert_eq!(fixups.reinjected, Some(GuestEvent::nmi()));
    assert_eq!(vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE), Ok(0));
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_0202));
}

#[test]
fn nmi_blocking_restore_refused_with_nmi_injection_pending_sdm_26_3_1_5() {
    let exit = SoftVmcs::new().complete_exit();
    // An exception exit whose IRET unblocked NMIs (bit 12), no IDT-vectoring information.
    let info = ExitInfo::from_parts(
        &exit,
        ExitInfoParts { reason: 0, interruption_info: 0x8000_130E, ..ExitInfoParts::default() },
    );
    assert!(nmi_unblocked_by_iret(&info, true));
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0x8000_0202).unwrap();
    let before = snapshot(&vmcs);
    let result = reinject_idt_vectoring(&mut vmcs, &info, &context(true));
    assert!(matches!(
        result,
        Err(InjectError::NmiBlockingWithNmiPending { pending }) if pending.raw() == 0x8000_0202
    ));
    assert_eq!(snapshot(&vmcs), before);
    // A pending external interrupt does not conflict: blocking restored, injection kept.
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0x8000_0030).unwrap();
    let fixups = reinject_idt_vectoring(&mut vmcs, &info, &context(true)).unwrap();
    assert!(fixups.nmi_blocking_restored);
    assert_eq!(fixups.reinjected, None);
    assert_eq!(vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE), Ok(BLOCKING_BY_NMI));
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_0030));
    // Nothing pending: restored.
    let mut vmcs = guest_vmcs(0, true);
    assert!(
        reinject_idt_vectoring(&mut vmcs, &info, &context(true)).unwrap().nmi_blocking_restored
    );
    assert_eq!(vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE), Ok(BLOCKING_BY_NMI));
    // Without virtual NMIs the rule does not apply: nothing written, no error.
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0x8000_0202).unwrap();
    let before = snapshot(&vmcs);
    assert_eq!(
        reinject_idt_vectoring(&mut vmcs, &info, &context(false)),
        Ok(GuestFixups::default())
    );
    assert_eq!(snapshot(&vmcs), before);
}

#[test]
fn interrupt_owed_in_wait_for_sipi_or_shutdown_is_deferred_sdm_26_3_1_5() {
    for activity in [ActivityState::WaitForSipi, ActivityState::Shutdown] {
        let mut queue = GuestEventQueue::new();
        queue.queue_irq(0x30);
        let mut vmcs = with_activity(guest_vmcs(0, true), activity);
        assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::Deferred));
        assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0));
        assert_eq!(controls_of(&vmcs), 0, "{activity:?}: no window exit");
        assert_eq!(queue.highest_irq(), Some(0x30), "still owed");
        // Back to active: delivered.
        let mut vmcs = guest_vmcs(0, true);
        let decision = queue.prepare_entry(&mut vmcs, &context(true)).unwrap();
        assert_eq!(decision, EntryDecision::Injected(GuestEvent::external_interrupt(0x30)));
    }
    // An NMI may be injected in shutdown, not in wait-for-SIPI.
    let mut queue = GuestEventQueue::new();
    queue.queue_nmi();
    let mut sipi = with_activity(guest_vmcs(0, true), ActivityState::WaitForSipi);
    assert_eq!(queue.prepare_entry(&mut sipi, &context(true)), Ok(EntryDecision::Deferred));
    assert_eq!(controls_of(&sipi), 0);
    let mut shutdown = with_activity(guest_vmcs(0, true), ActivityState::Shutdown);
    let decision = queue.prepare_entry(&mut shutdown, &context(true)).unwrap();
    assert_eq!(decision, EntryDecision::Injected(GuestEvent::nmi()));
}

#[test]
fn hlt_takes_interrupts_and_nmis_and_requests_windows_sdm_26_6_2() {
    let mut queue = GuestEventQueue::new();
    queue.queue_irq(0x30);
    queue.queue_irq(0x31);
    let mut vmcs = with_activity(guest_vmcs(0, true), ActivityState::Hlt);
    let decision = queue.prepare_entry(&mut vmcs, &context(true)).unwrap();
    assert_eq!(decision, EntryDecision::Injected(GuestEvent::external_interrupt(0x31)));
    assert_eq!(controls_of(&vmcs), INTERRUPT_WINDOW, "0x30 still owed");
    // IF = 0 in HLT: the interrupt window (it wakes the processor, SDM 26.6.5).
    let mut vmcs = with_activity(guest_vmcs(0, false), ActivityState::Hlt);
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::WindowRequested));
    assert_eq!(controls_of(&vmcs), INTERRUPT_WINDOW);
    queue.queue_nmi();
    let mut vmcs = with_activity(guest_vmcs(0, false), ActivityState::Hlt);
    let decision = queue.prepare_entry(&mut vmcs, &context(true)).unwrap();
    assert_eq!(decision, EntryDecision::Injected(GuestEvent::nmi()));
}

#[test]
fn errors_leave_vmcs_and_queue_unchanged() {
    // A guest state no entry accepts (reserved interruptibility bit): the injection is refused.
    let mut queue = GuestEventQueue::new();
    queue.queue_irq(0x30);
    queue.queue_nmi();
    let mut vmcs = guest_vmcs(1 << 5, true);
    let (vmcs_before, queue_before) = (snapshot(&vmcs), queue);
    let result = queue.prepare_entry(&mut vmcs, &context(true));
    assert!(matches!(result, Err(InjectError::EntryCheck(_))), "{result:?}");
    assert_eq!(snapshot(&vmcs), vmcs_before);
    assert_eq!(queue, queue_before);
    // A VMWRITE that fails after the injection was written (the primary controls are
    // missing): the injection is rolled back, the queue keeps the interrupt.
    let mut vmcs = SoftVmcs::with_supported(|info| {
        info.name != "PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS"
    });
    vmcs.write(field::GUEST_RFLAGS, 0x202).unwrap();
    let mut queue = GuestEventQueue::new();
    queue.queue_irq(0x30);
    let (fields_before, _) = snapshot(&vmcs);
    let queue_before = queue;
    let result = queue.prepare_entry(&mut vmcs, &context(true));
    assert!(matches!(result, Err(InjectError::Vmcs(_))), "{result:?}");
    assert_eq!(snapshot(&vmcs).0, fields_before, "every field as before");
    assert_eq!(vmcs.last_instruction_error(), 12, "the failed access reports error 12");
    assert_eq!(queue, queue_before);
    // inject: INJECTED_EVENT_DATA missing although the context says it exists.
    let mut vmcs = SoftVmcs::with_supported(|info| info.name != "INJECTED_EVENT_DATA");
    vmcs.write(field::GUEST_RFLAGS, 0x202).unwrap();
    let fred = InjectionContext { injected_event_data: true, ..context(true) };
    let (fields_before, _) = snapshot(&vmcs);
    let result = inject(&mut vmcs, &GuestEvent::external_interrupt(0x30), &fred);
    assert!(matches!(result, Err(InjectError::Vmcs(_))));
    assert_eq!(snapshot(&vmcs).0, fields_before);
    // Refused injections.
    let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, true);
    let before = snapshot(&vmcs);
    assert!(inject(&mut vmcs, &GuestEvent::nmi(), &context(true)).is_err());
    assert_eq!(snapshot(&vmcs), before);
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0x8000_0030).unwrap();
    let before = snapshot(&vmcs);
    assert!(matches!(
        inject(&mut vmcs, &GuestEvent::nmi(), &context(true)),
        Err(InjectError::AlreadyPending { .. })
    ));
    assert_eq!(snapshot(&vmcs), before);
}

// ---- Defect 4: INJECTED_EVENT_DATA ----------------------------------------------------------

#[test]
fn injected_event_data_written_at_every_injection_for_fred_guests() {
    let fred = InjectionContext { injected_event_data: true, ..context(true) };
    let mut vmcs = guest_vmcs(0, true);
    let with_data = GuestEvent { event_data: Some(0xDEAD_B000), ..GuestEvent::nmi() };
    inject(&mut vmcs, &with_data, &fred).unwrap();
    assert_eq!(vmcs.read(field::INJECTED_EVENT_DATA), Ok(0xDEAD_B000));
    // The next injection has no data: 0, not the previous event's.
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0).unwrap();
    inject(&mut vmcs, &GuestEvent::external_interrupt(0x30), &fred).unwrap();
    assert_eq!(vmcs.read(field::INJECTED_EVENT_DATA), Ok(0));
    // All-ones data survives.
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0).unwrap();
    let all = GuestEvent { event_data: Some(u64::MAX), ..GuestEvent::external_interrupt(0x30) };
    inject(&mut vmcs, &all, &fred).unwrap();
    assert_eq!(vmcs.read(field::INJECTED_EVENT_DATA), Ok(u64::MAX));
    // The queue's injections too.
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0).unwrap();
    let mut queue = GuestEventQueue::new();
    queue.queue_nmi();
    queue.prepare_entry(&mut vmcs, &fred).unwrap();
    assert_eq!(vmcs.read(field::INJECTED_EVENT_DATA), Ok(0));
    // Without the field (no FRED): never touched, even for an event that carries data.
    let mut no_fred = SoftVmcs::with_supported(|info| info.name != "INJECTED_EVENT_DATA");
    no_fred.write(field::GUEST_RFLAGS, 0x202).unwrap();
    inject(&mut no_fred, &with_data, &context(true)).unwrap();
    assert_eq!(no_fred.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_0202));
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::INJECTED_EVENT_DATA, 7).unwrap();
    inject(&mut vmcs, &GuestEvent::nmi(), &context(true)).unwrap();
    assert_eq!(vmcs.read(field::INJECTED_EVENT_DATA), Ok(7), "not written without FRED");
}

// ---- Defect 5: NMI latching ------------------------------------------------------------------

#[test]
fn nmi_latching_holds_at_most_one_pending_beside_one_in_service() {
    let mut queue = GuestEventQueue::new();
    assert_eq!(queue.queue_nmi(), NmiQueued::Owed);
    assert_eq!(queue.queue_nmi(), NmiQueued::Owed);
    assert_eq!(queue.queue_nmi(), NmiQueued::Merged);
    assert_eq!(queue.queue_nmi(), NmiQueued::Merged);
    assert_eq!((queue.pending_nmis(), queue.merged_nmis()), (2, 2));
    // None in service: one injected, one held.
    let mut vmcs = guest_vmcs(0, true);
    let decision = queue.prepare_entry(&mut vmcs, &context(true)).unwrap();
    assert_eq!(decision, EntryDecision::Injected(GuestEvent::nmi()));
    assert_eq!((queue.pending_nmis(), queue.merged_nmis()), (1, 2));
    assert_eq!(controls_of(&vmcs), NMI_WINDOW);
    // One in service (blocking by NMI): two owed shrink to one.
    assert_eq!(queue.queue_nmi(), NmiQueued::Owed);
    let mut vmcs = guest_vmcs(BLOCKING_BY_NMI, true);
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::WindowRequested));
    assert_eq!((queue.pending_nmis(), queue.merged_nmis()), (1, 3));
    // One in service as a pending NMI injection: same bound.
    assert_eq!(queue.queue_nmi(), NmiQueued::Owed);
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0x8000_0202).unwrap();
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::AlreadyPending));
    assert_eq!((queue.pending_nmis(), queue.merged_nmis()), (1, 4));
    // A pending interrupt injection is not an NMI in service: two stay owed.
    assert_eq!(queue.queue_nmi(), NmiQueued::Owed);
    let mut vmcs = guest_vmcs(0, true);
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0x8000_0030).unwrap();
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::AlreadyPending));
    assert_eq!((queue.pending_nmis(), queue.merged_nmis()), (2, 4));
}

// ---- The context from the capability MSRs -----------------------------------------------------

#[test]
fn injection_context_from_capabilities() {
    // Pin: NMI exiting and virtual NMIs allowed; primary: everything but bit 22 allowed
    // (interrupt window, MTF, secondary controls); secondary: unrestricted guest allowed.
    let primary_allowed = !(1u64 << 22) << 32;
    let msrs = [
        (msr::IA32_VMX_BASIC, (1 << 56) | (1 << 58)),
        (msr::IA32_VMX_PINBASED_CTLS, 0xFF_u64 << 32),
        (msr::IA32_VMX_PROCBASED_CTLS, primary_allowed),
        (msr::IA32_VMX_EXIT_CTLS, 0xFFFF_FFFF_u64 << 32),
        (msr::IA32_VMX_ENTRY_CTLS, 0xFFFF_FFFF_u64 << 32),
        (msr::IA32_VMX_MISC, 1 << 30),
        (msr::IA32_VMX_CR0_FIXED0, 0),
        (msr::IA32_VMX_CR0_FIXED1, u64::MAX),
        (msr::IA32_VMX_CR4_FIXED0, 0),
        (msr::IA32_VMX_CR4_FIXED1, u64::MAX),
        (msr::IA32_VMX_PROCBASED_CTLS2, 0xFFFF_FFFF_u64 << 32),
    ];
    let caps = VmxCapabilities::read(&RecordedMsrs(&msrs)).unwrap();
    let request = ControlRequest {
        pin: PinBasedControls::NMI_EXITING | PinBasedControls::VIRTUAL_NMIS,
        secondary: SecondaryControls::UNRESTRICTED_GUEST,
        ..ControlRequest::default()
    };
    let adjusted = controls::adjust(&caps, &request).unwrap();
    let context = InjectionContext::from_capabilities(&caps, &adjusted, true);
    assert!(context.virtual_nmis && context.unrestricted_guest && context.injected_event_data);
    assert!(!context.nmi_window_usable(), "bit 22 not allowed-1");
    assert!(context.interrupt_window_usable());
    let c = context.capabilities;
    assert!(c.no_error_code_consistency_check && c.zero_length_injection);
    assert!(c.monitor_trap_flag && c.nested_exception && c.fred_guest);
    assert!(c.nmi_requires_no_sti_blocking);
    // The other sides: nothing requested, plain MSRs.
    let plain = [
        (msr::IA32_VMX_BASIC, 0),
        (msr::IA32_VMX_PINBASED_CTLS, 0xFF_u64 << 32),
        (msr::IA32_VMX_PROCBASED_CTLS, 0xFFFF_FFFF_u64 << 32),
        (msr::IA32_VMX_EXIT_CTLS, 0xFFFF_FFFF_u64 << 32),
        (msr::IA32_VMX_ENTRY_CTLS, 0xFFFF_FFFF_u64 << 32),
        (msr::IA32_VMX_MISC, 0),
        (msr::IA32_VMX_CR0_FIXED0, 0),
        (msr::IA32_VMX_CR0_FIXED1, u64::MAX),
        (msr::IA32_VMX_CR4_FIXED0, 0),
        (msr::IA32_VMX_CR4_FIXED1, u64::MAX),
        (msr::IA32_VMX_PROCBASED_CTLS2, 0xFFFF_FFFF_u64 << 32),
    ];
    let caps = VmxCapabilities::read(&RecordedMsrs(&plain)).unwrap();
    let adjusted = controls::adjust(&caps, &ControlRequest::default()).unwrap();
    let context = InjectionContext::from_capabilities(&caps, &adjusted, false);
    assert!(!context.virtual_nmis && !context.unrestricted_guest && !context.injected_event_data);
    assert!(!context.nmi_window_usable(), "no virtual NMIs");
    let c = context.capabilities;
    assert!(!c.no_error_code_consistency_check && !c.zero_length_injection);
    assert!(c.monitor_trap_flag && !c.nested_exception && !c.fred_guest);
    // Unrestricted guest in the secondary field but the secondary controls not activated.
    let mut adjusted = adjusted;
    adjusted.secondary = SecondaryControls::UNRESTRICTED_GUEST;
    assert!(!InjectionContext::from_capabilities(&caps, &adjusted, false).unrestricted_guest);
    adjusted.primary |= PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
    assert!(InjectionContext::from_capabilities(&caps, &adjusted, false).unrestricted_guest);
    // With virtual NMIs and bit 22 allowed-1: usable.
    let vnmi = InjectionContext { virtual_nmis: true, ..context };
    assert!(vnmi.nmi_window_usable());
}

// ---- Defect 8: reflecting intercepted exceptions ----------------------------------------------

fn exception_exit(parts: ExitInfoParts) -> Result<ReflectedException, ReflectError> {
    let (mut vmcs, parts) = exit_parts(parts);
    let exit = vmcs.complete_exit();
    reflected_exception(&ExitInfo::from_parts(&exit, parts))
}

#[test]
fn alignment_check_reflected_with_its_error_code_cve_2015_5307() {
    let reflected = exception_exit(ExitInfoParts {
        reason: 0,
        interruption_info: 0x8000_0B11,
        interruption_error_code: 0,
        instruction_length: 3,
        ..ExitInfoParts::default()
    })
    .unwrap();
    assert_eq!(reflected.event.info.raw(), 0x8000_0B11);
    assert_eq!(reflected.event.error_code, 0);
    assert_eq!(reflected.event.instruction_length, 0, "hardware exception: no length");
    assert_eq!((reflected.debug, reflected.page_fault_address), (None, None));
    assert_eq!(reflected.event.event_data, None);
    // It passes the entry checks and injects.
    let mut vmcs = guest_vmcs(0, true);
    inject(&mut vmcs, &reflected.event, &context(true)).unwrap();
    assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO), Ok(0x8000_0B11));
    assert_eq!(vmcs.read(field::VM_ENTRY_EXCEPTION_ERROR_CODE), Ok(0));
    // The "NMI unblocking due to IRET" bit (12) is not copied into the injection.
    let reflected = exception_exit(ExitInfoParts {
        reason: 0,
        interruption_info: 0x8000_1B11,
        interruption_error_code: 0xFFFF,
        ..ExitInfoParts::default()
    })
    .unwrap();
    assert_eq!(reflected.event.info.raw(), 0x8000_0B11);
    assert_eq!(reflected.event.error_code, 0xFFFF);
}

#[test]
fn debug_exception_reflected_with_dr6_from_the_exit_qualification_cve_2015_8104() {
    // Single step (BS) and B1, plus undefined bits that must be dropped.
    let qualification = (1 << 14) | (1 << 1) | (1 << 20) | (1 << 4);
    let reflected = exception_exit(ExitInfoParts {
        reason: 0,
        interruption_info: 0x8000_0301,
        qualification,
        ..ExitInfoParts::default()
    })
    .unwrap();
    assert_eq!(reflected.event.info.raw(), 0x8000_0301);
    let conditions = reflected.debug.unwrap();
    assert_eq!(conditions.raw(), (1 << 14) | (1 << 1));
    assert_eq!(reflected.event.event_data, Some((1 << 14) | (1 << 1)), "FRED event data");
    assert_eq!(conditions.apply_to_dr6(0xFFFF_0FF0), 0xFFFF_4FF2);
    // #DB is allowed in HLT (SDM 26.3.1.5).
    let mut vmcs = with_activity(guest_vmcs(0, true), ActivityState::Hlt);
    inject(&mut vmcs, &reflected.event, &context(true)).unwrap();
}

#[test]
fn dr6_update_follows_sdm_17_2_3() {
    let none = DebugConditions::from_qualification(0);
    let b0 = DebugConditions::from_qualification(1);
    let b2 = DebugConditions::from_qualification(4);
    let bd = DebugConditions::from_qualification(1 << 13);
    let rtm = DebugConditions::from_qualification(1 << 16);
    let everything = DebugConditions::from_qualification(u64::MAX);
    assert_eq!(everything.raw(), 0x1_600F);
    assert_eq!(DebugConditions::DEFINED, 0x1_600F);
    // B0-B3 replaced.
    assert_eq!(b2.apply_to_dr6(0xFFFF_0FF1), 0xFFFF_0FF4);
    assert_eq!(b0.apply_to_dr6(0xFFFF_0FF0), 0xFFFF_0FF1);
    assert_eq!(none.apply_to_dr6(0xFFFF_0FFF), 0xFFFF_0FF0);
    // BD and BS kept when set before (the processor never clears them), set when reported.
    assert_eq!(b0.apply_to_dr6(0xFFFF_6FF0), 0xFFFF_6FF1);
    assert_eq!(bd.apply_to_dr6(0xFFFF_0FF0), 0xFFFF_2FF0);
    // RTM is active low: cleared when reported, set otherwise.
    assert_eq!(rtm.apply_to_dr6(0xFFFF_0FF0), 0xFFFE_0FF0);
    assert_eq!(none.apply_to_dr6(0xFFFE_0FF0), 0xFFFF_0FF0);
    assert_eq!(none.apply_to_dr6(0), 1 << 16);
    assert_eq!(none.apply_to_dr6(u64::MAX), !0xF_u64);
    assert_eq!(everything.apply_to_dr6(0), 0x6000 | 0xF);
    assert_eq!(everything.apply_to_dr6(u64::MAX), !(1u64 << 16));
}

#[test]
fn page_fault_reflected_with_cr2_to_write() {
    let reflected = exception_exit(ExitInfoParts {
        reason: 0,
        interruption_info: 0x8000_0B0E,
        interruption_error_code: 6,
        qualification: 0xFFFF_8000_DEAD_B000,
        ..ExitInfoParts::default()
    })
    .unwrap();
    assert_eq!(reflected.page_fault_address, Some(0xFFFF_8000_DEAD_B000));
    assert_eq!(reflected.event.event_data, Some(0xFFFF_8000_DEAD_B000));
    assert_eq!(reflected.event.error_code, 6);
    assert_eq!(reflected.debug, None);
}

#[test]
fn software_exceptions_reflected_with_instruction_length() {
    for (info, length) in [(0x8000_0603u32, 1u32), (0x8000_0604, 1), (0x8000_0501, 1)] {
        let reflected = exception_exit(ExitInfoParts {
            reason: 0,
            interruption_info: info,
            instruction_length: length,
            qualification: 0xF,
            ..ExitInfoParts::default()
        })
        .unwrap();
        assert_eq!(reflected.event.info.raw(), info);
        assert_eq!(reflected.event.instruction_length, length);
        assert_eq!(reflected.debug, None, "INT1 is not a hardware #DB");
        let mut vmcs = guest_vmcs(0, true);
        inject(&mut vmcs, &reflected.event, &context(true)).unwrap();
        assert_eq!(vmcs.read(field::VM_ENTRY_INSTRUCTION_LENGTH), Ok(length));
    }
}

#[test]
fn only_exception_exits_are_reflected() {
    let not_exit = |parts| exception_exit(parts).unwrap_err();
    let cpuid =
        ExitInfoParts { reason: 10, interruption_info: 0x8000_0311, ..ExitInfoParts::default() };
    assert_eq!(not_exit(cpuid), ReflectError::NotAnExceptionExit);
    let failed = ExitInfoParts {
        reason: 0x8000_0000,
        interruption_info: 0x8000_0311,
        ..ExitInfoParts::default()
    };
    assert_eq!(not_exit(failed), ReflectError::NotAnExceptionExit);
    let invalid =
        ExitInfoParts { reason: 0, interruption_info: 0x0000_0311, ..ExitInfoParts::default() };
    assert_eq!(not_exit(invalid), ReflectError::NotAnExceptionExit);
    for info in [0x8000_0202u32, 0x8000_0030, 0x8000_0430, 0x8000_0100, 0x8000_0700] {
        let parts =
            ExitInfoParts { reason: 0, interruption_info: info, ..ExitInfoParts::default() };
        assert_eq!(
            not_exit(parts),
            ReflectError::NotAnException { info: InterruptionInfo::from_raw(info) }
        );
    }
    let during = ExitInfoParts {
        reason: 0,
        interruption_info: 0x8000_0311,
        idt_vectoring_info: 0x8000_0311,
        ..ExitInfoParts::default()
    };
    assert_eq!(
        not_exit(during),
        ReflectError::DuringEventDelivery { vectoring: InterruptionInfo::from_raw(0x8000_0311) }
    );
}

#[test]
fn new_errors_read_like_the_manual() {
    let pending = InterruptionInfo::from_raw(0x8000_0202);
    let text = std::format!("{}", InjectError::NmiBlockingWithNmiPending { pending });
    assert!(text.contains("0x80000202") && text.contains("SDM 26.3.1.5"), "{text}");
    assert_eq!(
        std::format!("{}", ReflectError::NotAnExceptionExit),
        "not an exception VM exit (basic reason 0)"
    );
    let text = std::format!("{}", ReflectError::NotAnException { info: pending });
    assert_eq!(text, "exit interruption info 0x80000202 is not an exception");
    let text = std::format!("{}", ReflectError::DuringEventDelivery { vectoring: pending });
    assert_eq!(text, "exception during delivery of 0x80000202: re-inject that event instead");
}

/// Every decision the queue makes passes the validator, in every configuration.
#[test]
fn every_prepared_entry_passes_the_entry_checks() {
    let mut checked = 0;
    for vnmi in [false, true] {
        for forbidden in [0, NMI_WINDOW, INTERRUPT_WINDOW, NMI_WINDOW | INTERRUPT_WINDOW] {
            let context = allowing(context(vnmi), forbidden);
            for blocking in [0, STI, MOV_SS, BLOCKING_BY_NMI, STI | BLOCKING_BY_NMI, MOV_SS | 8] {
                for rflags_if in [false, true] {
                    for activity in 0..4 {
                        let sti_or_movss = blocking & (STI | MOV_SS) != 0;
                        if (blocking & STI != 0 && !rflags_if) || (activity != 0 && sti_or_movss) {
                            continue;
                        }
                        for owed in 0..4 {
                            let mut queue = GuestEventQueue::new();
                            if owed & 1 != 0 {
                                queue.queue_nmi();
                            }
                            if owed & 2 != 0 {
                                queue.queue_irq(0x80);
                            }
                            let activity = ActivityState::from_raw(activity);
                            let mut vmcs = with_activity(guest_vmcs(blocking, rflags_if), activity);
                            let decision = queue.prepare_entry(&mut vmcs, &context).unwrap();
                            let controls = controls_of(&vmcs);
                            assert_eq!(controls & forbidden, 0, "only allowed-1 controls");
                            if !vnmi {
                                assert_eq!(controls & NMI_WINDOW, 0, "SDM 26.2.1.1");
                            }
                            let guest = guest::guest_event_state(&vmcs, &context).unwrap();
                            let entry = EntryEvent {
                                info: InterruptionInfo::from_raw(
                                    vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap(),
                                ),
                                error_code: 0,
                                instruction_length: 0,
                            };
                            let caps = EntryCapabilities::STRICT;
                            entry_check::check(&entry, &guest, &caps).unwrap();
                            // Livelock guard: an interrupt window that opens at once (IF = 1,
                            // no STI/MOV-SS blocking, active) only when an interrupt is owed
                            // after an injection (the delivery clears IF through the gate).
                            let opens_at_once = rflags_if && blocking & 3 == 0;
                            if controls & INTERRUPT_WINDOW != 0 && opens_at_once {
                                assert!(
                                    matches!(decision, EntryDecision::Injected(_)),
                                    "{decision:?} blocking {blocking:#x} activity {activity:?}"
                                );
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn nothing_owed_and_windows_clear_touches_no_vmcs_field() {
    let context = context(true);
    // A fresh queue does not know the window controls: the first call reads them and clears a
    // window that setup code left on.
    let mut vmcs = guest_vmcs(0, true);
    let primary = field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS;
    vmcs.write(primary, INTERRUPT_WINDOW | NMI_WINDOW).unwrap();
    let mut queue = GuestEventQueue::new();
    assert_eq!(queue.prepare_entry(&mut vmcs, &context), Ok(EntryDecision::Idle));
    assert_eq!(vmcs.read(primary).unwrap() & (INTERRUPT_WINDOW | NMI_WINDOW), 0);
    // Now nothing is owed and the windows are known clear: a VMCS without a single field
    // (every access fails) is not touched.
    let mut no_fields = SoftVmcs::with_supported(|_| false);
    assert_eq!(queue.prepare_entry(&mut no_fields, &context), Ok(EntryDecision::Idle));
    assert_eq!(no_fields.last_instruction_error(), 0, "no VMREAD/VMWRITE was attempted");
    // Something owed: the full path again (and it fails on the field-less VMCS, queue intact).
    queue.queue_irq(0x30);
    let before = queue;
    assert!(queue.prepare_entry(&mut no_fields, &context).is_err());
    assert_eq!(queue, before);
    // The guest cannot take it (IF = 0): the window goes on, so the queue no longer assumes
    // clear windows even after the interrupt is delivered later.
    let mut closed = guest_vmcs(0, false);
    assert_eq!(queue.prepare_entry(&mut closed, &context), Ok(EntryDecision::WindowRequested));
    assert_ne!(closed.read(primary).unwrap() & INTERRUPT_WINDOW, 0);
    let mut open = closed.clone();
    open.write(field::GUEST_RFLAGS, 0x202).unwrap();
    assert!(matches!(queue.prepare_entry(&mut open, &context), Ok(EntryDecision::Injected(_))));
    assert_eq!(open.read(primary).unwrap() & INTERRUPT_WINDOW, 0, "window off once delivered");
    assert_eq!(queue.prepare_entry(&mut no_fields, &context), Ok(EntryDecision::Idle));
}

/// Found by the event-delivery model: on processors whose NMI window opens under STI blocking
/// (they may still refuse NMI injection until the STI shadow ends, SDM 26.3.1.5), asking for
/// the NMI window under STI blocking exits before every guest instruction. The interrupt window
/// is used instead; behind blocking by NMI the NMI window stays (it opens only after IRET).
#[test]
fn nmi_under_sti_blocking_waits_for_the_interrupt_window_not_a_livelock() {
    let mut queue = GuestEventQueue::new();
    queue.queue_nmi();
    let mut vmcs = guest_vmcs(STI, true);
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::WindowRequested));
    assert_eq!(controls_of(&vmcs) & (NMI_WINDOW | INTERRUPT_WINDOW), INTERRUPT_WINDOW);
    // The next instruction ended the STI shadow: the NMI goes in, windows off.
    let mut vmcs = guest_vmcs(0, true);
    assert_eq!(
        queue.prepare_entry(&mut vmcs, &context(true)),
        Ok(EntryDecision::Injected(GuestEvent::nmi()))
    );
    assert_eq!(controls_of(&vmcs) & (NMI_WINDOW | INTERRUPT_WINDOW), 0);
    // STI and blocking by NMI: the NMI window, which stays shut until the guest's IRET.
    queue.queue_nmi();
    let mut vmcs = guest_vmcs(STI | BLOCKING_BY_NMI, true);
    assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::WindowRequested));
    assert_eq!(controls_of(&vmcs) & (NMI_WINDOW | INTERRUPT_WINDOW), NMI_WINDOW);
}

#[test]
fn reinjected_exception_keeps_only_the_nested_bit_it_had() {
    let exit = SoftVmcs::new().complete_exit();
    // #PF (hardware exception, error code) whose delivery was not nested: bit 13 clear. With
    // nested-exception support on, the re-injected event must not gain bit 13 (or any other
    // bit of the IDT-vectoring information: bit 12 is undefined there).
    for vectoring in [0x8000_0B0E_u32, 0x8000_1B0E] {
        let info = ExitInfo::from_parts(
            &exit,
            ExitInfoParts {
                reason: 48,
                idt_vectoring_info: vectoring,
                idt_vectoring_error_code: 2,
                ..ExitInfoParts::default()
            },
        );
        let event = guest::idt_vectoring_event(&info, true).unwrap();
        assert_eq!(event.info.raw(), 0x8000_0B0E, "vectoring {vectoring:#x}");
    }
}

#[test]
fn guest_event_state_reads_cr0_pe_from_bit_0_only() {
    // CR0 after reset (CD, NW, ET: PE clear), then protected mode with paging (PE set).
    for (cr0, pe) in [(0x6000_0010_u64, false), (0x1, true), (0x8000_0011, true)] {
        let mut vmcs = guest_vmcs(0, true);
        vmcs.write(field::GUEST_CR0, cr0).unwrap();
        let state = guest::guest_event_state(&vmcs, &context(true)).unwrap();
        assert_eq!(state.cr0_pe, pe, "CR0 {cr0:#x}");
    }
}

#[test]
fn idle_shortcut_sees_interrupts_in_every_word_of_the_queue() {
    // Pairs of vectors at the same bit of neighbouring 64-vector words: the words are equal,
    // so only an OR of all four (not an XOR) tells that something is owed.
    for (low, high) in [(0x21_u8, 0x61_u8), (0x41, 0x81), (0x81, 0xC1)] {
        let mut queue = GuestEventQueue::new();
        let mut vmcs = guest_vmcs(0, true);
        // Nothing owed: the windows are cleared, so the next call may take the shortcut.
        assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::Idle));
        queue.queue_irq(low);
        queue.queue_irq(high);
        for vector in [high, low] {
            let mut vmcs = guest_vmcs(0, true);
            assert_eq!(
                queue.prepare_entry(&mut vmcs, &context(true)),
                Ok(EntryDecision::Injected(GuestEvent::external_interrupt(vector))),
                "vectors {low:#x} and {high:#x}"
            );
        }
        let mut vmcs = guest_vmcs(0, true);
        assert_eq!(queue.prepare_entry(&mut vmcs, &context(true)), Ok(EntryDecision::Idle));
    }
}
