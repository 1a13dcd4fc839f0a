//! A validator of the VM-entry event-injection fields and the guest state tied to them
//! (SDM Vol. 3C 26.2.1.3 "Checks on VM-Entry Control Fields" and 26.3.1.5 "Checks on Guest
//! Non-Register State").
//!
//! Run [`check`] before writing an injection: a violation here is a VM-entry failure on
//! hardware (VMfailValid error 7 for the control-field rules, an exit with reason 33 for the
//! guest-state rules). The rules that depend on the processor take their switches from
//! [`EntryCapabilities`].
#![forbid(unsafe_code)]

use crate::event::{
    ActivityState, GuestInterruptibility, InterruptionInfo, InterruptionType, vector,
};
use core::fmt;

/// Type 7 (other event) vector 0: monitor trap flag.
pub const OTHER_EVENT_MTF: u8 = 0;
/// Type 7 (other event) vector 1: SYSCALL (FRED guests only).
pub const OTHER_EVENT_SYSCALL: u8 = 1;
/// Type 7 (other event) vector 2: SYSENTER (FRED guests only).
pub const OTHER_EVENT_SYSENTER: u8 = 2;

/// The VM-entry event to check: the three VM-entry event-injection fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EntryEvent {
    /// VM-entry interruption-information field (0x4016).
    pub info: InterruptionInfo,
    /// VM-entry exception error code (0x4018).
    pub error_code: u32,
    /// VM-entry instruction length (0x401A).
    pub instruction_length: u32,
}

/// The guest state the injection rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestEventState {
    /// Guest CR0.PE (bit 0 of the guest CR0 field).
    pub cr0_pe: bool,
    /// Guest RFLAGS.IF (bit 9 of the guest RFLAGS field).
    pub rflags_if: bool,
    /// Guest interruptibility state.
    pub interruptibility: GuestInterruptibility,
    /// Guest activity state.
    pub activity: ActivityState,
    /// The "virtual NMIs" pin-based control.
    pub virtual_nmis: bool,
    /// The "unrestricted guest" secondary control.
    pub unrestricted_guest: bool,
}

/// Processor capabilities that change the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EntryCapabilities {
    /// IA32_VMX_BASIC\[56\]: no check of deliver-error-code against the vector.
    pub no_error_code_consistency_check: bool,
    /// IA32_VMX_MISC\[30\]: software interrupts/exceptions may be injected with length 0.
    pub zero_length_injection: bool,
    /// The "monitor trap flag" control is supported (type 7 may be injected).
    pub monitor_trap_flag: bool,
    /// IA32_VMX_BASIC\[58\]: nested-exception bit 13 may be set (type 3 only).
    pub nested_exception: bool,
    /// The guest runs with FRED ("IA-32e mode guest" = 1 and guest CR4.FRED = 1): type 7 may
    /// also carry vector 1 (SYSCALL) or 2 (SYSENTER), which need no monitor-trap-flag support
    /// and take an instruction length like types 4-6. `false` (as in [`Self::STRICT`]) keeps
    /// type 7 to vector 0 (MTF).
    pub fred_guest: bool,
    /// Treat STI blocking as forbidding NMI injection (the SDM allows processors to require
    /// it; `true` is the portable choice).
    pub nmi_requires_no_sti_blocking: bool,
    /// The processor supports SGX (CPUID.(EAX=07H,ECX=0):EBX\[2\]): only then may the guest's
    /// enclave-interruption blocking (bit 4) be 1.
    pub sgx: bool,
}

impl EntryCapabilities {
    /// The strictest set: every optional relaxation off, STI blocking forbidding NMI injection.
    /// An event that passes here passes on every processor.
    pub const STRICT: Self = Self {
        no_error_code_consistency_check: false,
        zero_length_injection: false,
        monitor_trap_flag: false,
        nested_exception: false,
        fred_guest: false,
        nmi_requires_no_sti_blocking: true,
        sgx: false,
    };
}

/// The VM-execution and VM-exit controls whose consistency event handling depends on
/// (SDM Vol. 3C 26.2.1.1 "VM-Execution Control Fields", 26.2.1.2 "VM-Exit Control Fields").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EventControls {
    /// Pin-based "NMI exiting" (bit 3).
    pub nmi_exiting: bool,
    /// Pin-based "virtual NMIs" (bit 5).
    pub virtual_nmis: bool,
    /// Pin-based "process posted interrupts" (bit 7).
    pub process_posted_interrupts: bool,
    /// Pin-based "external-interrupt exiting" (bit 0).
    pub external_interrupt_exiting: bool,
    /// Primary processor-based "NMI-window exiting" (bit 22).
    pub nmi_window_exiting: bool,
    /// VM-exit "acknowledge interrupt on exit" (bit 15).
    pub acknowledge_interrupt_on_exit: bool,
}

/// Checks the consistency rules between the event controls: a violation is a VM-entry failure
/// with VMfailValid error 7 (invalid control fields). Whether the processor allows each control
/// at all is [`adjust`](crate::controls::adjust)'s business (capability MSRs).
pub fn check_event_controls(controls: &EventControls) -> Result<(), EntryRule> {
    if controls.virtual_nmis && !controls.nmi_exiting {
        return Err(EntryRule::VirtualNmisWithoutNmiExiting);
    }
    if controls.nmi_window_exiting && !controls.virtual_nmis {
        return Err(EntryRule::NmiWindowWithoutVirtualNmis);
    }
    if controls.process_posted_interrupts
        && !(controls.external_interrupt_exiting && controls.acknowledge_interrupt_on_exit)
    {
        return Err(EntryRule::PostedInterruptsWithoutAcknowledge);
    }
    Ok(())
}

sdm_rules! {
    /// One rule of the VM-entry checks.
    EntryRule,
    /// The SDM section that states the rule.
    ;
    /// Virtual NMIs need NMI exiting.
    VirtualNmisWithoutNmiExiting => "26.2.1.1",
        "the \"virtual NMIs\" control needs the \"NMI exiting\" control";
    /// NMI-window exiting needs virtual NMIs.
    NmiWindowWithoutVirtualNmis => "26.2.1.1",
        "the \"NMI-window exiting\" control needs the \"virtual NMIs\" control";
    /// Posted interrupts need external-interrupt exiting and acknowledge interrupt on exit.
    PostedInterruptsWithoutAcknowledge => "26.2.1.1",
        "\"process posted interrupts\" needs \"external-interrupt exiting\" and \"acknowledge interrupt on exit\"";
    /// Interruption type 1 is reserved.
    ReservedType => "26.2.1.3", "interruption type 1 (reserved) may not be injected";
    /// Type 7 vector 0 (MTF) needs the monitor-trap-flag control.
    OtherEventUnsupported => "26.2.1.3", "type 7 (other event) vector 0 (MTF) needs monitor-trap-flag support";
    /// Type 7 vector: 0 (MTF), or 1 (SYSCALL) / 2 (SYSENTER) for a FRED guest only.
    OtherEventVector => "26.2.1.3",
        "type 7 (other event) needs vector 0 (MTF), or vector 1 (SYSCALL) or 2 (SYSENTER) with a FRED guest";
    /// NMI must be vector 2.
    NmiVector => "26.2.1.3", "type 2 (NMI) needs vector 2";
    /// Hardware exceptions use vectors 0-31.
    ExceptionVector => "26.2.1.3", "type 3 (hardware exception) needs a vector <= 31";
    /// Deliver-error-code must be set exactly for the exceptions that push one.
    DeliverErrorCodeMismatch => "26.2.1.3",
        "deliver-error-code (bit 11) must be 1 exactly for a hardware exception with vector 8, 10-14 or 17 in protected mode";
    /// Deliver-error-code must be clear for non-exceptions and real-mode guests.
    DeliverErrorCodeNotAllowed => "26.2.1.3",
        "deliver-error-code (bit 11) must be 0 unless the type is hardware exception and the guest is in protected mode";
    /// Bits 30:12 must be 0.
    ReservedBits => "26.2.1.3", "bits 30:12 must be 0";
    /// Bit 13 (nested exception) needs nested-exception support and type 3.
    NestedException => "26.2.1.3", "bit 13 (nested exception) needs IA32_VMX_BASIC[58] and type 3";
    /// Error code bits 31:16 must be 0.
    ErrorCodeHighBits => "26.2.1.3", "the VM-entry exception error code must have bits 31:16 clear";
    /// Types 4, 5 and 6, and type 7 vectors 1-2 (FRED), need an instruction length of 1-15
    /// (0 with IA32_VMX_MISC\[30\]).
    InstructionLength => "26.2.1.3",
        "types 4, 5 and 6 (and type 7 SYSCALL/SYSENTER) need a VM-entry instruction length of 1-15 (0 allowed with IA32_VMX_MISC[30])";
    /// An external interrupt needs RFLAGS.IF = 1.
    ExternalInterruptIfClear => "26.3.1.5", "an external interrupt needs guest RFLAGS.IF = 1";
    /// An external interrupt needs no STI or MOV-SS blocking.
    ExternalInterruptBlocked => "26.3.1.5", "an external interrupt needs no blocking by STI or MOV SS";
    /// An NMI needs no MOV-SS blocking (and, on some processors, no STI blocking).
    NmiBlockedByMovSsOrSti => "26.3.1.5", "an NMI needs no blocking by MOV SS (nor by STI on some processors)";
    /// With virtual NMIs, an injected NMI needs blocking-by-NMI clear.
    VirtualNmiBlocked => "26.3.1.5", "with virtual NMIs, injecting an NMI needs blocking by NMI = 0";
    /// STI blocking needs RFLAGS.IF = 1.
    StiBlockingIfClear => "26.3.1.5", "blocking by STI needs guest RFLAGS.IF = 1";
    /// STI and MOV-SS blocking cannot both be set.
    StiAndMovSs => "26.3.1.5", "blocking by STI and by MOV SS cannot both be 1";
    /// STI or MOV-SS blocking needs the active activity state.
    StiOrMovSsBlockingNotActive => "26.3.1.5",
        "blocking by STI or by MOV SS needs activity state 0 (active)";
    /// Enclave-interruption blocking cannot be combined with MOV-SS blocking.
    EnclaveInterruptionWithMovSs => "26.3.1.5",
        "enclave interruption (bit 4) must be 0 when blocking by MOV SS (bit 1) is 1";
    /// Blocking by SMI (bit 2) only in SMM: a VM entry from outside SMM needs it 0.
    SmiBlockingOutsideSmm => "26.3.1.5", "blocking by SMI (bit 2) must be 0 outside SMM";
    /// Enclave-interruption blocking needs SGX.
    EnclaveInterruptionWithoutSgx => "26.3.1.5",
        "enclave interruption (bit 4) needs a processor with SGX (CPUID.(7,0):EBX[2])";
    /// Interruptibility bits 31:5 must be 0.
    InterruptibilityReservedBits => "26.3.1.5", "guest interruptibility bits 31:5 must be 0";
    /// The activity state must be 0-3.
    ActivityStateInvalid => "26.3.1.5", "the activity state must be 0 (active), 1 (HLT), 2 (shutdown) or 3 (wait-for-SIPI)";
    /// HLT allows only external interrupts, NMIs, #DB, #MC and MTF.
    ActivityHltEvent => "26.3.1.5", "in the HLT state only an external interrupt, NMI, #DB, #MC or MTF may be injected";
    /// Shutdown allows only NMIs and #MC.
    ActivityShutdownEvent => "26.3.1.5", "in the shutdown state only an NMI or #MC may be injected";
    /// Wait-for-SIPI allows no injection.
    ActivityWaitForSipiEvent => "26.3.1.5", "in the wait-for-SIPI state no event may be injected";
}

/// A violated rule, with the field values that broke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct EntryCheckError {
    /// The rule.
    pub rule: EntryRule,
    /// The interruption information checked.
    pub info: InterruptionInfo,
}

impl fmt::Display for EntryCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VM-entry interruption info {:#010x} (type {}, vector {}): {} (SDM {})",
            self.info.raw(),
            self.info.event_type().bits(),
            self.info.vector(),
            self.rule.text(),
            self.rule.section()
        )
    }
}

/// Checks an injection (or, with the valid bit clear, only the guest-state rules).
pub fn check(
    event: &EntryEvent,
    guest: &GuestEventState,
    caps: &EntryCapabilities,
) -> Result<(), EntryCheckError> {
    let info = event.info;
    let fail = |rule| Err(EntryCheckError { rule, info });
    let blocking = guest.interruptibility;

    // Guest-state rules that hold whether or not an event is injected.
    if blocking.bits() & !0x1F != 0 {
        return fail(EntryRule::InterruptibilityReservedBits);
    }
    if blocking.contains(GuestInterruptibility::STI | GuestInterruptibility::MOV_SS) {
        return fail(EntryRule::StiAndMovSs);
    }
    if blocking.contains(GuestInterruptibility::STI) && !guest.rflags_if {
        return fail(EntryRule::StiBlockingIfClear);
    }
    if let ActivityState::Unknown(_) = guest.activity {
        return fail(EntryRule::ActivityStateInvalid);
    }
    if guest.activity != ActivityState::Active
        && blocking.intersects(GuestInterruptibility::STI | GuestInterruptibility::MOV_SS)
    {
        return fail(EntryRule::StiOrMovSsBlockingNotActive);
    }
    if blocking
        .contains(GuestInterruptibility::ENCLAVE_INTERRUPTION | GuestInterruptibility::MOV_SS)
    {
        return fail(EntryRule::EnclaveInterruptionWithMovSs);
    }
    if blocking.contains(GuestInterruptibility::ENCLAVE_INTERRUPTION) && !caps.sgx {
        return fail(EntryRule::EnclaveInterruptionWithoutSgx);
    }
    // VM entries that hvkit prepares start outside SMM (the dual-monitor treatment of SMIs is
    // not supported), where blocking by SMI must be 0.
    if blocking.contains(GuestInterruptibility::SMI) {
        return fail(EntryRule::SmiBlockingOutsideSmm);
    }
    if !info.is_valid() {
        return Ok(());
    }

    // Control-field rules (26.2.1.3).
    let event_type = info.event_type();
    let vector = info.vector();
    match event_type {
        InterruptionType::Reserved => return fail(EntryRule::ReservedType),
        InterruptionType::Other => match vector {
            OTHER_EVENT_MTF if !caps.monitor_trap_flag => {
                return fail(EntryRule::OtherEventUnsupported);
            }
            OTHER_EVENT_MTF => {}
            OTHER_EVENT_SYSCALL | OTHER_EVENT_SYSENTER if caps.fred_guest => {}
            _ => return fail(EntryRule::OtherEventVector),
        },
        InterruptionType::Nmi if vector != vector::NMI => return fail(EntryRule::NmiVector),
        InterruptionType::HardwareException if vector > 31 => {
            return fail(EntryRule::ExceptionVector);
        }
        _ => {}
    }
    let protected_mode = guest.cr0_pe || !guest.unrestricted_guest;
    let exception = event_type == InterruptionType::HardwareException;
    if info.error_code_valid() && (!exception || !protected_mode) {
        return fail(EntryRule::DeliverErrorCodeNotAllowed);
    }
    if !caps.no_error_code_consistency_check
        && exception
        && protected_mode
        && info.error_code_valid() != vector::has_error_code(vector)
    {
        return fail(EntryRule::DeliverErrorCodeMismatch);
    }
    if info.raw() & 0x7FFF_D000 != 0 {
        return fail(EntryRule::ReservedBits);
    }
    if info.nested_exception() && (!caps.nested_exception || !exception) {
        return fail(EntryRule::NestedException);
    }
    if info.error_code_valid() && event.error_code & 0xFFFF_0000 != 0 {
        return fail(EntryRule::ErrorCodeHighBits);
    }
    // SYSCALL and SYSENTER injected into a FRED guest carry their instruction length as the
    // software events do (FRED spec, VMX interactions; KVM checks only the upper bound, the
    // stricter rule here also passes there).
    let fred_instruction = event_type == InterruptionType::Other && vector != OTHER_EVENT_MTF;
    if event_type.uses_instruction_length() || fred_instruction {
        let length = event.instruction_length;
        let shortest = if caps.zero_length_injection { 0 } else { 1 };
        if length < shortest || length > 15 {
            return fail(EntryRule::InstructionLength);
        }
    }

    // Guest-state rules tied to the injected event (26.3.1.5).
    match event_type {
        InterruptionType::ExternalInterrupt => {
            if !guest.rflags_if {
                return fail(EntryRule::ExternalInterruptIfClear);
            }
            if blocking.intersects(GuestInterruptibility::STI | GuestInterruptibility::MOV_SS) {
                return fail(EntryRule::ExternalInterruptBlocked);
            }
        }
        InterruptionType::Nmi => {
            let mut forbidden = GuestInterruptibility::MOV_SS;
            if caps.nmi_requires_no_sti_blocking {
                forbidden |= GuestInterruptibility::STI;
            }
            if blocking.intersects(forbidden) {
                return fail(EntryRule::NmiBlockedByMovSsOrSti);
            }
            if guest.virtual_nmis && blocking.contains(GuestInterruptibility::NMI) {
                return fail(EntryRule::VirtualNmiBlocked);
            }
        }
        _ => {}
    }
    let debug_or_machine_check =
        exception && matches!(vector, vector::DEBUG | vector::MACHINE_CHECK);
    let mtf = event_type == InterruptionType::Other && vector == 0;
    match guest.activity {
        ActivityState::Hlt => {
            let allowed =
                matches!(event_type, InterruptionType::ExternalInterrupt | InterruptionType::Nmi)
                    || debug_or_machine_check
                    || mtf;
            if !allowed {
                return fail(EntryRule::ActivityHltEvent);
            }
        }
        ActivityState::Shutdown => {
            let allowed = event_type == InterruptionType::Nmi
                || (exception && vector == vector::MACHINE_CHECK);
            if !allowed {
                return fail(EntryRule::ActivityShutdownEvent);
            }
        }
        ActivityState::WaitForSipi => return fail(EntryRule::ActivityWaitForSipiEvent),
        ActivityState::Active | ActivityState::Unknown(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use EntryRule as R;

    const ACTIVE: GuestEventState = GuestEventState {
        cr0_pe: true,
        rflags_if: true,
        interruptibility: GuestInterruptibility::empty(),
        activity: ActivityState::Active,
        virtual_nmis: true,
        unrestricted_guest: false,
    };
    const CAPS: EntryCapabilities = EntryCapabilities::STRICT;

    fn event(raw: u32) -> EntryEvent {
        EntryEvent { info: InterruptionInfo::from_raw(raw), error_code: 0, instruction_length: 1 }
    }

    fn rule(event: EntryEvent, guest: GuestEventState, caps: EntryCapabilities) -> Option<R> {
        check(&event, &guest, &caps).err().map(|error| error.rule)
    }

    fn with(guest: GuestEventState, bits: GuestInterruptibility) -> GuestEventState {
        GuestEventState { interruptibility: bits, ..guest }
    }

    #[test]
    fn type_and_vector_boundaries() {
        assert_eq!(rule(event(0x8000_0100), ACTIVE, CAPS), Some(R::ReservedType));
        assert_eq!(rule(event(0x8000_0202), ACTIVE, CAPS), None);
        assert_eq!(rule(event(0x8000_0203), ACTIVE, CAPS), Some(R::NmiVector));
        assert_eq!(rule(event(0x8000_0201), ACTIVE, CAPS), Some(R::NmiVector));
        assert_eq!(rule(event(0x8000_031F), ACTIVE, CAPS), None, "vector 31");
        assert_eq!(rule(event(0x8000_0320), ACTIVE, CAPS), Some(R::ExceptionVector), "vector 32");
        assert_eq!(rule(event(0x8000_00FF), ACTIVE, CAPS), None, "external interrupt 255");
        // Type 7.
        assert_eq!(rule(event(0x8000_0700), ACTIVE, CAPS), Some(R::OtherEventUnsupported));
        let mtf = EntryCapabilities { monitor_trap_flag: true, ..CAPS };
        assert_eq!(rule(event(0x8000_0700), ACTIVE, mtf), None);
        assert_eq!(rule(event(0x8000_0701), ACTIVE, mtf), Some(R::OtherEventVector));
        let fred = EntryCapabilities { fred_guest: true, ..mtf };
        assert_eq!(rule(event(0x8000_0702), ACTIVE, fred), None);
        assert_eq!(rule(event(0x8000_0703), ACTIVE, fred), Some(R::OtherEventVector));
    }

    #[test]
    fn type_7_syscall_and_sysenter_only_for_fred_guests() {
        let fred = EntryCapabilities { fred_guest: true, ..CAPS };
        for vector in [OTHER_EVENT_SYSCALL, OTHER_EVENT_SYSENTER] {
            let injected = event(0x8000_0700 | u32::from(vector));
            // Not a FRED guest: refused, with or without MTF support.
            assert_eq!(rule(injected, ACTIVE, CAPS), Some(R::OtherEventVector), "{vector}");
            let mtf = EntryCapabilities { monitor_trap_flag: true, ..CAPS };
            assert_eq!(rule(injected, ACTIVE, mtf), Some(R::OtherEventVector), "{vector}");
            // A FRED guest needs no MTF support for them.
            assert_eq!(rule(injected, ACTIVE, fred), None, "{vector}");
        }
        // Vector 0 stays MTF: still needs MTF support in a FRED guest.
        assert_eq!(rule(event(0x8000_0700), ACTIVE, fred), Some(R::OtherEventUnsupported));
        for vector in [3u32, 0x80, 0xFF] {
            assert_eq!(rule(event(0x8000_0700 | vector), ACTIVE, fred), Some(R::OtherEventVector));
        }
    }

    #[test]
    fn type_7_syscall_and_sysenter_instruction_length_boundaries() {
        let fred = EntryCapabilities { fred_guest: true, ..CAPS };
        for vector in [OTHER_EVENT_SYSCALL, OTHER_EVENT_SYSENTER] {
            let mut injected = event(0x8000_0700 | u32::from(vector));
            for (length, ok) in [(0, false), (1, true), (2, true), (15, true), (16, false)] {
                injected.instruction_length = length;
                let expected = if ok { None } else { Some(R::InstructionLength) };
                assert_eq!(
                    rule(injected, ACTIVE, fred),
                    expected,
                    "vector {vector} length {length}"
                );
            }
            injected.instruction_length = 0;
            let zero = EntryCapabilities { zero_length_injection: true, ..fred };
            assert_eq!(rule(injected, ACTIVE, zero), None, "IA32_VMX_MISC[30]");
        }
        // MTF (vector 0) has no instruction length.
        let mtf = EntryCapabilities { monitor_trap_flag: true, ..fred };
        let mut injected = event(0x8000_0700);
        for length in [0, 16, 0xFFFF] {
            injected.instruction_length = length;
            assert_eq!(rule(injected, ACTIVE, mtf), None, "MTF length {length}");
        }
        assert_eq!((OTHER_EVENT_MTF, OTHER_EVENT_SYSCALL, OTHER_EVENT_SYSENTER), (0, 1, 2));
    }

    #[test]
    fn deliver_error_code_both_sides() {
        for vector in 0..32u32 {
            let pushes = matches!(vector, 8 | 10..=14 | 17);
            let with_code = event(0x8000_0B00 | vector);
            let without = event(0x8000_0300 | vector);
            let (good, bad) = if pushes { (with_code, without) } else { (without, with_code) };
            assert_eq!(rule(good, ACTIVE, CAPS), None, "vector {vector}");
            assert_eq!(
                rule(bad, ACTIVE, CAPS),
                Some(R::DeliverErrorCodeMismatch),
                "vector {vector}"
            );
            // IA32_VMX_BASIC[56] lifts the consistency check (but not the others).
            let relaxed = EntryCapabilities { no_error_code_consistency_check: true, ..CAPS };
            assert_eq!(rule(bad, ACTIVE, relaxed), None, "vector {vector} relaxed");
        }
        // Not an exception: error code never allowed.
        assert_eq!(rule(event(0x8000_0830), ACTIVE, CAPS), Some(R::DeliverErrorCodeNotAllowed));
        // Real-mode unrestricted guest: no error code, even for #GP.
        let real = GuestEventState { cr0_pe: false, unrestricted_guest: true, ..ACTIVE };
        assert_eq!(rule(event(0x8000_0B0D), real, CAPS), Some(R::DeliverErrorCodeNotAllowed));
        assert_eq!(rule(event(0x8000_030D), real, CAPS), None);
        // CR0.PE = 0 without unrestricted guest still counts as protected mode.
        let restricted = GuestEventState { cr0_pe: false, ..ACTIVE };
        assert_eq!(rule(event(0x8000_0B0D), restricted, CAPS), None);
    }

    #[test]
    fn reserved_nested_and_error_code_bits() {
        assert_eq!(rule(event(0x8000_1202), ACTIVE, CAPS), Some(R::ReservedBits), "bit 12");
        assert_eq!(rule(event(0xC000_0202), ACTIVE, CAPS), Some(R::ReservedBits), "bit 30");
        assert_eq!(rule(event(0x8000_2B0E), ACTIVE, CAPS), Some(R::NestedException), "bit 13");
        let nested = EntryCapabilities { nested_exception: true, ..CAPS };
        let mut pf = event(0x8000_2B0E);
        assert_eq!(rule(pf, ACTIVE, nested), None);
        assert_eq!(rule(event(0x8000_2202), ACTIVE, nested), Some(R::NestedException), "type 2");
        pf.error_code = 0x0000_FFFF;
        assert_eq!(rule(pf, ACTIVE, nested), None, "bit 15 may be set");
        pf.error_code = 0x0001_0000;
        assert_eq!(rule(pf, ACTIVE, nested), Some(R::ErrorCodeHighBits), "bit 16 may not");
    }

    #[test]
    fn instruction_length_boundaries() {
        for kind in [4u32, 5, 6] {
            let mut software = event(0x8000_0003 | (kind << 8));
            for (length, ok) in [(0, false), (1, true), (15, true), (16, false)] {
                software.instruction_length = length;
                let expected = if ok { None } else { Some(R::InstructionLength) };
                assert_eq!(rule(software, ACTIVE, CAPS), expected, "type {kind} length {length}");
            }
            software.instruction_length = 0;
            let zero = EntryCapabilities { zero_length_injection: true, ..CAPS };
            assert_eq!(rule(software, ACTIVE, zero), None);
        }
        let mut nmi = event(0x8000_0202);
        nmi.instruction_length = 0;
        assert_eq!(rule(nmi, ACTIVE, CAPS), None, "length only matters for types 4-6");
    }

    #[test]
    fn guest_state_for_external_interrupts_and_nmis() {
        let irq = event(0x8000_0030);
        let if_clear = GuestEventState { rflags_if: false, ..ACTIVE };
        assert_eq!(rule(irq, if_clear, CAPS), Some(R::ExternalInterruptIfClear));
        assert_eq!(
            rule(irq, with(ACTIVE, GuestInterruptibility::STI), CAPS),
            Some(R::ExternalInterruptBlocked)
        );
        assert_eq!(
            rule(irq, with(ACTIVE, GuestInterruptibility::MOV_SS), CAPS),
            Some(R::ExternalInterruptBlocked)
        );
        assert_eq!(rule(irq, with(ACTIVE, GuestInterruptibility::NMI), CAPS), None);
        let nmi = event(0x8000_0202);
        assert_eq!(rule(nmi, if_clear, CAPS), None, "NMIs ignore IF");
        assert_eq!(
            rule(nmi, with(ACTIVE, GuestInterruptibility::MOV_SS), CAPS),
            Some(R::NmiBlockedByMovSsOrSti)
        );
        assert_eq!(
            rule(nmi, with(ACTIVE, GuestInterruptibility::STI), CAPS),
            Some(R::NmiBlockedByMovSsOrSti)
        );
        let lenient = EntryCapabilities { nmi_requires_no_sti_blocking: false, ..CAPS };
        assert_eq!(rule(nmi, with(ACTIVE, GuestInterruptibility::STI), lenient), None);
        assert_eq!(
            rule(nmi, with(ACTIVE, GuestInterruptibility::NMI), CAPS),
            Some(R::VirtualNmiBlocked)
        );
        let no_vnmi = GuestEventState { virtual_nmis: false, ..ACTIVE };
        assert_eq!(rule(nmi, with(no_vnmi, GuestInterruptibility::NMI), CAPS), None);
    }

    #[test]
    fn interruptibility_rules_apply_without_injection() {
        let none = event(0);
        assert_eq!(rule(none, ACTIVE, CAPS), None);
        let both = GuestInterruptibility::STI | GuestInterruptibility::MOV_SS;
        assert_eq!(rule(none, with(ACTIVE, both), CAPS), Some(R::StiAndMovSs));
        let if_clear = GuestEventState { rflags_if: false, ..ACTIVE };
        assert_eq!(
            rule(none, with(if_clear, GuestInterruptibility::STI), CAPS),
            Some(R::StiBlockingIfClear)
        );
        let reserved = GuestInterruptibility::from_bits_retain(1 << 5);
        assert_eq!(rule(none, with(ACTIVE, reserved), CAPS), Some(R::InterruptibilityReservedBits));
        let unknown = GuestEventState { activity: ActivityState::Unknown(4), ..ACTIVE };
        assert_eq!(rule(none, unknown, CAPS), Some(R::ActivityStateInvalid));
        // An invalid (bit 31 clear) field is not checked further, whatever its other bits.
        assert_eq!(rule(event(0x7FFF_FFFF), ACTIVE, CAPS), None);
    }

    #[test]
    fn sti_or_mov_ss_blocking_needs_activity_state_active() {
        let none = event(0);
        for blocking in [GuestInterruptibility::STI, GuestInterruptibility::MOV_SS] {
            assert_eq!(rule(none, with(ACTIVE, blocking), CAPS), None, "{blocking:?} active");
            for activity in
                [ActivityState::Hlt, ActivityState::Shutdown, ActivityState::WaitForSipi]
            {
                let guest = GuestEventState { activity, ..with(ACTIVE, blocking) };
                assert_eq!(
                    rule(none, guest, CAPS),
                    Some(R::StiOrMovSsBlockingNotActive),
                    "{blocking:?} {activity:?}"
                );
            }
        }
        // NMI blocking (bit 3) is fine in every activity state.
        for activity in [ActivityState::Hlt, ActivityState::Shutdown, ActivityState::WaitForSipi] {
            let guest = GuestEventState { activity, ..with(ACTIVE, GuestInterruptibility::NMI) };
            assert_eq!(rule(none, guest, CAPS), None, "{activity:?}");
        }
    }

    #[test]
    fn enclave_interruption_not_with_mov_ss_blocking() {
        let none = event(0);
        let sgx = EntryCapabilities { sgx: true, ..CAPS };
        let enclave = GuestInterruptibility::ENCLAVE_INTERRUPTION;
        assert_eq!(rule(none, with(ACTIVE, enclave), sgx), None);
        assert_eq!(rule(none, with(ACTIVE, GuestInterruptibility::MOV_SS), sgx), None);
        assert_eq!(
            rule(none, with(ACTIVE, enclave | GuestInterruptibility::MOV_SS), sgx),
            Some(R::EnclaveInterruptionWithMovSs)
        );
        assert_eq!(rule(none, with(ACTIVE, enclave | GuestInterruptibility::STI), sgx), None);
    }

    #[test]
    fn enclave_interruption_needs_sgx() {
        let none = event(0);
        let enclave = with(ACTIVE, GuestInterruptibility::ENCLAVE_INTERRUPTION);
        assert_eq!(rule(none, enclave, CAPS), Some(R::EnclaveInterruptionWithoutSgx));
        assert_eq!(rule(none, enclave, EntryCapabilities { sgx: true, ..CAPS }), None);
        // With an injection too: the guest-state rule holds whatever is injected.
        assert_eq!(rule(event(0x8000_0202), enclave, CAPS), Some(R::EnclaveInterruptionWithoutSgx));
        assert_eq!(rule(none, ACTIVE, CAPS), None, "bit 4 clear needs no SGX");
    }

    #[test]
    fn smi_blocking_only_in_smm() {
        let none = event(0);
        let sgx = EntryCapabilities { sgx: true, ..CAPS };
        assert_eq!(
            rule(none, with(ACTIVE, GuestInterruptibility::SMI), sgx),
            Some(R::SmiBlockingOutsideSmm)
        );
        // Its neighbours bits 1 and 3 alone are fine.
        assert_eq!(rule(none, with(ACTIVE, GuestInterruptibility::MOV_SS), sgx), None);
        assert_eq!(rule(none, with(ACTIVE, GuestInterruptibility::NMI), sgx), None);
        assert_eq!(
            rule(event(0x8000_0030), with(ACTIVE, GuestInterruptibility::SMI), sgx),
            Some(R::SmiBlockingOutsideSmm)
        );
    }

    #[test]
    fn event_control_consistency() {
        let valid = EventControls {
            nmi_exiting: true,
            virtual_nmis: true,
            nmi_window_exiting: true,
            ..EventControls::default()
        };
        assert_eq!(check_event_controls(&valid), Ok(()));
        assert_eq!(check_event_controls(&EventControls::default()), Ok(()));
        assert_eq!(
            check_event_controls(&EventControls { nmi_exiting: false, ..valid }),
            Err(R::VirtualNmisWithoutNmiExiting)
        );
        assert_eq!(
            check_event_controls(&EventControls { nmi_exiting: true, ..EventControls::default() }),
            Ok(()),
            "NMI exiting alone"
        );
        assert_eq!(
            check_event_controls(&EventControls {
                nmi_window_exiting: true,
                nmi_exiting: true,
                ..EventControls::default()
            }),
            Err(R::NmiWindowWithoutVirtualNmis)
        );
        let posted = EventControls {
            process_posted_interrupts: true,
            external_interrupt_exiting: true,
            acknowledge_interrupt_on_exit: true,
            ..EventControls::default()
        };
        assert_eq!(check_event_controls(&posted), Ok(()));
        assert_eq!(
            check_event_controls(&EventControls { acknowledge_interrupt_on_exit: false, ..posted }),
            Err(R::PostedInterruptsWithoutAcknowledge)
        );
        assert_eq!(
            check_event_controls(&EventControls { external_interrupt_exiting: false, ..posted }),
            Err(R::PostedInterruptsWithoutAcknowledge)
        );
        for rule in [
            R::VirtualNmisWithoutNmiExiting,
            R::NmiWindowWithoutVirtualNmis,
            R::PostedInterruptsWithoutAcknowledge,
        ] {
            assert_eq!(rule.section(), "26.2.1.1");
        }
    }

    #[test]
    fn activity_states_limit_the_events() {
        let hlt = GuestEventState { activity: ActivityState::Hlt, ..ACTIVE };
        let mtf = EntryCapabilities { monitor_trap_flag: true, ..CAPS };
        assert_eq!(rule(event(0x8000_0030), hlt, mtf), None);
        assert_eq!(rule(event(0x8000_0202), hlt, mtf), None);
        assert_eq!(rule(event(0x8000_0301), hlt, mtf), None, "#DB");
        assert_eq!(rule(event(0x8000_0312), hlt, mtf), None, "#MC");
        assert_eq!(rule(event(0x8000_0700), hlt, mtf), None, "MTF");
        assert_eq!(rule(event(0x8000_0303), hlt, mtf), Some(R::ActivityHltEvent), "#BP as hw");
        assert_eq!(rule(event(0x8000_0B0D), hlt, mtf), Some(R::ActivityHltEvent), "#GP");
        let shutdown = GuestEventState { activity: ActivityState::Shutdown, ..ACTIVE };
        assert_eq!(rule(event(0x8000_0202), shutdown, CAPS), None);
        assert_eq!(rule(event(0x8000_0312), shutdown, CAPS), None);
        assert_eq!(rule(event(0x8000_0030), shutdown, CAPS), Some(R::ActivityShutdownEvent));
        let sipi = GuestEventState { activity: ActivityState::WaitForSipi, ..ACTIVE };
        assert_eq!(rule(event(0x8000_0202), sipi, CAPS), Some(R::ActivityWaitForSipiEvent));
        assert_eq!(rule(event(0), sipi, CAPS), None);
    }

    #[test]
    fn hlt_and_shutdown_allow_only_their_exact_events() {
        // HLT: MTF is type 7 *and* vector 0; neither alone qualifies (SDM 26.3.1.5).
        let hlt = GuestEventState { activity: ActivityState::Hlt, ..ACTIVE };
        let fred = EntryCapabilities { monitor_trap_flag: true, fred_guest: true, ..CAPS };
        assert_eq!(rule(event(0x8000_0300), hlt, fred), Some(R::ActivityHltEvent), "#DE");
        let syscall = event(0x8000_0700 | u32::from(OTHER_EVENT_SYSCALL));
        assert_eq!(rule(syscall, hlt, fred), Some(R::ActivityHltEvent), "FRED SYSCALL");
        // Shutdown: #MC is a hardware exception *and* vector 18; neither alone qualifies.
        let shutdown = GuestEventState { activity: ActivityState::Shutdown, ..ACTIVE };
        assert_eq!(rule(event(0x8000_0300), shutdown, CAPS), Some(R::ActivityShutdownEvent));
        assert_eq!(rule(event(0x8000_0412), shutdown, CAPS), Some(R::ActivityShutdownEvent));
    }

    #[test]
    fn every_rule_is_reachable_and_explained() {
        assert_eq!(EntryRule::ALL.len(), 29);
        for rule in EntryRule::ALL {
            assert!(rule.section().starts_with("26."));
            assert!(!rule.text().is_empty());
        }
        let error = check(&event(0x8000_0303), &ACTIVE, &CAPS);
        assert_eq!(error, Ok(()));
        let error = check(&event(0x8000_0B03), &ACTIVE, &CAPS).unwrap_err();
        assert_eq!(
            std::format!("{error}"),
            "VM-entry interruption info 0x80000b03 (type 3, vector 3): deliver-error-code (bit 11) \
             must be 1 exactly for a hardware exception with vector 8, 10-14 or 17 in protected mode (SDM 26.2.1.3)"
        );
    }
}
