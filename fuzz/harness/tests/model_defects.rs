//! Inputs of the `exit_sequence` target that reproduce the defects the model of VMX event
//! delivery found in hvkit (issue 10). Input layout: two configuration bytes (see
//! `model::Config::from_bits`; high byte bit 1 = library told to treat STI as blocking NMIs,
//! bit 2 = the model writes invalid exit fields itself), then five bytes per exit: guest step,
//! host events, hypervisor actions, vector, extra.
//!
//! Items 1-6 are fixed (each test failed on main before the fixes of issue 10 merged). The last
//! test is a finding still open, ignored with its reason.

fn run(input: &[u8]) {
    hvkit_fuzz_harness::exit_sequence(input);
}

/// Virtual NMIs off, an NMI owed under MOV-SS blocking: NMI-window exiting must not be set
/// (SDM 26.2.1.1: NMI-window exiting requires virtual NMIs; VM-instruction error 7).
#[test]
fn nmi_window_requires_virtual_nmis_26_2_1_1() {
    run(&[0x02, 0x04, 0x03, 0x00, 0x01, 0x00, 0x00]);
}

/// NMI-window exiting not allowed by IA32_VMX_PROCBASED_CTLS: it must not be set (26.2.1.1).
#[test]
fn nmi_window_only_where_the_capability_allows_it() {
    run(&[0x01, 0x04, 0x03, 0x00, 0x01, 0x00, 0x00]);
}

/// NMI owed while virtual-NMI blocking holds, interrupt owed, guest IF=1 inside its NMI
/// handler: requesting the interrupt window without injecting livelocks (SDM 25.2: the window
/// opens whatever the NMI blocking, before the guest's IRET).
#[test]
fn interrupt_window_opens_whatever_the_nmi_blocking_25_2() {
    run(&[
        0x03, 0x04, // virtual NMIs, NMI window allowed
        0x00, 0x00, 0x06, 0x40, 0x00, // CPUID exit; two NMIs and vector 0x40 owed
        0x01, 0x00, 0x00, 0x00, 0x00, // in the NMI handler: STI
        0x00, 0x00, 0x00, 0x00, 0x00, // then one more instruction: IF=1, no STI blocking
    ]);
}

/// An NMI's delivery hit an EPT violation while the hypervisor had already injected #UD:
/// `reinject_idt_vectoring` refuses, and must not have cleared blocking-by-NMI first.
#[test]
fn failed_reinjection_leaves_the_vmcs_unchanged() {
    run(&[0x03, 0x04, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x20, 0x18, 0x00, 0x00]);
}

/// IRET in the guest's NMI handler unblocked NMIs and hit an EPT violation; the hypervisor
/// injected an NMI while handling the exit: restoring virtual-NMI blocking on top of a pending
/// NMI injection makes the VM entry fail (SDM 26.3.1.5).
#[test]
fn nmi_blocking_restore_respects_a_pending_nmi_injection() {
    run(&[0x03, 0x04, 0x00, 0x00, 0x01, 0x00, 0x00, 0x0A, 0x00, 0x08, 0x00, 0x00]);
}

/// INIT emulated (wait-for-SIPI) with an interrupt owed and IF=1: prepare_entry must defer,
/// not fail (SDM 26.3.1.5: no event may be injected in wait-for-SIPI).
#[test]
fn owed_events_wait_in_wait_for_sipi_26_3_1_5() {
    run(&[0x03, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x0B, 0x00, 0x04, 0x40, 0x00]);
}

/// FRED guest: a #PF (event data = CR2) is re-injected, then an owed NMI is injected: its
/// INJECTED_EVENT_DATA must be 0, not the #PF's CR2.
#[test]
fn injected_event_data_is_never_stale() {
    run(&[0x83, 0x04, 0x08, 0x20, 0x01, 0x05, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00]);
}

/// Three NMIs requested before the guest handled any: one is delivered, one is held, the
/// third merges (NMI latching).
#[test]
fn nmis_latch_one_beside_one_in_service() {
    run(&[0x03, 0x04, 0x00, 0x00, 0x03, 0x00, 0x00]);
}

/// A #UD whose delivery hit an EPT violation is re-injected once; the next exits must not
/// report that IDT-vectoring information again (SDM 28.2.4: written at every exit).
#[test]
fn exit_completion_invalidates_idt_vectoring_28_2_4() {
    run(&[0x03, 0x00, 0x08, 0x20, 0x00, 0x00, 0x00]);
}

/// On a processor that does not block NMIs after STI (its NMI window opens under STI
/// blocking), a library told that STI blocks NMIs requests the NMI window and never injects.
#[test]
fn nmi_window_under_sti_blocking_does_not_livelock() {
    hvkit_fuzz_harness::model::driver::run_with_portable_sti_setting(&[
        0x03, 0x06, 0x01, 0x00, 0x01, 0x00, 0x00,
    ]);
}

/// Blocking by SMI (interruptibility bit 2) outside SMM: the model fails the VM entry (SDM
/// 26.3.1.5: bit 2 must be 0 if the processor is not in SMM); hvkit's validator accepted it
/// until main's SmiBlockingOutsideSmm rule.
#[test]
fn smi_blocking_outside_smm_fails_entry_26_3_1_5() {
    let config = hvkit_fuzz_harness::model::Config::from_bits(0x03);
    let view = hvkit_fuzz_harness::model::EntryView {
        interruptibility: 0x04,
        rflags_if: true,
        cr0_pe: true,
        ..Default::default()
    };
    assert!(hvkit_fuzz_harness::model::check_guest_state(&config, &view).is_err());
    let guest = hvkit_vmx_core::entry_check::GuestEventState {
        cr0_pe: true,
        rflags_if: true,
        interruptibility: hvkit_vmx_core::event::GuestInterruptibility::from_bits_retain(0x04),
        activity: hvkit_vmx_core::event::ActivityState::from_raw(0),
        virtual_nmis: true,
        unrestricted_guest: false,
    };
    let event = hvkit_vmx_core::entry_check::EntryEvent {
        info: hvkit_vmx_core::event::InterruptionInfo::from_raw(0),
        error_code: 0,
        instruction_length: 0,
    };
    let caps = hvkit_vmx_core::entry_check::EntryCapabilities::STRICT;
    assert!(hvkit_vmx_core::entry_check::check(&event, &guest, &caps).is_err());
}
