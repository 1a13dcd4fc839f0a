//! The logic of hvkit's fuzz targets. Each function takes the raw fuzz input, decodes it with
//! `arbitrary`, drives the crates through their public APIs with software backends, and panics
//! when an invariant breaks. The same functions replay the committed seeds on stable
//! (`tests/replay.rs`).

pub mod model;
mod oracle;

use arbitrary::{Arbitrary, Unstructured};
use hvkit_nmi_reinject::{
    EntryDecision, GuestEventQueue, HostEvent, InjectionContext, IrqDelivery, Redeliver,
    RedeliveryError, handle_host_event, idt_vectoring_event, nmi_unblocked_by_iret,
    reinject_idt_vectoring,
};
use hvkit_vmx_core::entry_check::{self, EntryCapabilities, EntryEvent, GuestEventState};
use hvkit_vmx_core::event::{ActivityState, GuestInterruptibility, InterruptionInfo};
use hvkit_vmx_core::exit::{
    ApicAccess, BasicExitReason, CrAccess, DebugExceptions, DescriptorTableInfo, EptViolation,
    ExitInfo, ExitInfoParts, ExitQualification, ExitReason, IoInstruction, MovDr, TaskSwitch,
    VmxInstructionInfo,
};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};

/// Every exit-information decoder over arbitrary values: no panic; lossless decoders give the
/// input back.
pub fn exit_decode(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok((reason, qualification, info, instruction_info, error)) =
        <(u32, u64, u32, u32, u32)>::arbitrary(&mut input)
    else {
        return;
    };
    let exit_reason = ExitReason::from_raw(reason);
    let basic = exit_reason.basic();
    assert_eq!(basic.number(), (reason & 0xFFFF) as u16);
    assert_eq!(BasicExitReason::from_number(basic.number()), basic);
    let _ =
        (exit_reason.is_entry_failure(), exit_reason.pending_mtf(), exit_reason.from_vmx_root());
    let decoded = ExitQualification::decode(basic, qualification);
    assert_eq!(decoded.raw(), qualification);
    let cr = CrAccess::from_raw(qualification);
    assert_eq!(cr.raw(), qualification);
    let _ = (cr.control_register(), cr.access_type(), cr.register(), cr.lmsw_source_data());
    let dr = MovDr::from_raw(qualification);
    assert!(dr.debug_register() < 8);
    let io = IoInstruction::from_raw(qualification);
    assert!((1..=8).contains(&io.size()));
    let _ = io.port();
    let ept = EptViolation::from_raw(qualification);
    assert_eq!(ept.nmi_unblocking_due_to_iret(), qualification & (1 << 12) != 0);
    let _ = ApicAccess::from_raw(qualification).access_type();
    let _ = TaskSwitch::from_raw(qualification).source();
    assert!(DebugExceptions::from_raw(qualification).breakpoints() < 16);
    let vmx_info = VmxInstructionInfo::from_raw(instruction_info);
    assert_eq!(vmx_info.raw(), instruction_info);
    let _ =
        (vmx_info.register1(), vmx_info.register2(), vmx_info.base_register(), vmx_info.segment());
    let _ = DescriptorTableInfo::from_raw(instruction_info).instruction();
    let interruption = InterruptionInfo::from_raw(info);
    assert_eq!(interruption.raw(), info);
    assert_eq!(interruption.event_type().bits(), (info >> 8) & 7);
    assert_eq!(interruption.vector(), info as u8);
    assert_eq!(interruption.with_valid(interruption.is_valid()).raw(), info);
    let number = hvkit_vmx_core::VmInstructionError::from_number(error);
    assert_eq!(number.number(), error);
    assert_eq!(ActivityState::from_raw(error).raw(), error);
    assert_eq!(GuestInterruptibility::from_bits_retain(error).bits(), error);
}

/// The VM-entry validator agrees with a second, table-driven model of the event-injection
/// checks of SDM Vol. 3C 26.2.1.3 (`oracle.rs`), and never panics.
pub fn entry_check(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(case) = oracle::EntryCase::arbitrary(&mut input) else { return };
    let event = EntryEvent {
        info: InterruptionInfo::from_raw(case.info),
        error_code: case.error_code,
        instruction_length: case.instruction_length,
    };
    let guest = GuestEventState {
        cr0_pe: case.cr0_pe,
        rflags_if: case.rflags_if,
        interruptibility: GuestInterruptibility::from_bits_retain(case.interruptibility),
        activity: ActivityState::from_raw(case.activity),
        virtual_nmis: case.virtual_nmis,
        unrestricted_guest: case.unrestricted_guest,
    };
    let caps = EntryCapabilities {
        no_error_code_consistency_check: case.no_error_code_check,
        zero_length_injection: case.zero_length,
        monitor_trap_flag: case.mtf,
        nested_exception: case.nested,
        fred_guest: case.fred,
        nmi_requires_no_sti_blocking: case.strict_sti,
        sgx: case.sgx,
    };
    let result = entry_check::check(&event, &guest, &caps);
    let model = oracle::allowed(&case);
    assert_eq!(result.is_ok(), model, "validator {result:?} vs model for {case:?}");
}

/// An arbitrary exit, as the processor would leave it in the VMCS.
#[derive(Debug, PartialEq, Eq, Arbitrary)]
struct ExitCase {
    reason_index: u8,
    raw_reason: u32,
    qualification_bit12: bool,
    qualification: u64,
    interruption_info: u32,
    interruption_kind: u8,
    idt_vectoring: u32,
    idt_vectoring_error_code: u32,
    instruction_length: u8,
    interruptibility: u8,
    activity: u8,
    rflags_if: bool,
    acknowledge_on_exit: bool,
    queue_nmis: u8,
    queue_irq: Option<u8>,
    entry_consumed: bool,
}

impl ExitCase {
    /// Bytes up to and including `queue_irq`'s presence flag.
    const FIXED_LEN: usize = 34;

    /// Decodes the same bytes into the same case as `ExitCase::arbitrary` (fields in order,
    /// integers little-endian, `bool` as bit 0 of a byte, `Option` as a `bool` then the value,
    /// missing bytes as zeros), without the derive's per-field calls and recursion guard: the
    /// fuzzer spends its time in the code under test, not in decoding.
    fn decode(input: &mut Unstructured<'_>) -> Self {
        let mut fixed = [0u8; Self::FIXED_LEN];
        let _ = input.fill_buffer(&mut fixed);
        let mut at = 0;
        let mut take = |n: usize| {
            let mut bytes = [0u8; 8];
            bytes[..n].copy_from_slice(&fixed[at..at + n]);
            at += n;
            u64::from_le_bytes(bytes)
        };
        let reason_index = take(1) as u8;
        let raw_reason = take(4) as u32;
        let qualification_bit12 = take(1) & 1 == 1;
        let qualification = take(8);
        let interruption_info = take(4) as u32;
        let interruption_kind = take(1) as u8;
        let idt_vectoring = take(4) as u32;
        let idt_vectoring_error_code = take(4) as u32;
        let instruction_length = take(1) as u8;
        let interruptibility = take(1) as u8;
        let activity = take(1) as u8;
        let rflags_if = take(1) & 1 == 1;
        let acknowledge_on_exit = take(1) & 1 == 1;
        let queue_nmis = take(1) as u8;
        let irq_present = take(1) & 1 == 1;
        let mut byte = || {
            let mut one = [0u8; 1];
            let _ = input.fill_buffer(&mut one);
            one[0]
        };
        let queue_irq = if irq_present { Some(byte()) } else { None };
        let entry_consumed = byte() & 1 == 1;
        Self {
            reason_index,
            raw_reason,
            qualification_bit12,
            qualification,
            interruption_info,
            interruption_kind,
            idt_vectoring,
            idt_vectoring_error_code,
            instruction_length,
            interruptibility,
            activity,
            rflags_if,
            acknowledge_on_exit,
            queue_nmis,
            queue_irq,
            entry_consumed,
        }
    }
}

const INTERESTING_REASONS: [u32; 12] = [0, 1, 7, 8, 10, 12, 18, 48, 62, 75, 0x8000_0021, 35];

/// Counts re-deliveries (no allocation: the fuzzer runs this for every exit).
#[derive(Default)]
struct CountingRedelivery {
    nmis: u32,
    irqs: u32,
    last_irq: u8,
}

impl Redeliver for CountingRedelivery {
    fn redeliver_nmi(&mut self) -> Result<(), RedeliveryError> {
        self.nmis += 1;
        Ok(())
    }
    fn redeliver_irq(&mut self, vector: u8) -> Result<IrqDelivery, RedeliveryError> {
        self.irqs += 1;
        self.last_irq = vector;
        Ok(IrqDelivery::Handled)
    }
}

/// A sequence of exits through the same entry points the example hypervisor uses, with the
/// invariants of issue 7 checked after every exit.
pub fn exit_handling(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(virtual_nmis) = bool::arbitrary(&mut input) else { return };
    let context = InjectionContext {
        capabilities: EntryCapabilities::STRICT,
        virtual_nmis,
        unrestricted_guest: false,
        primary_controls: InjectionContext::ANY_PRIMARY_CONTROLS,
        injected_event_data: false,
    };
    let mut vmcs = SoftVmcs::new();
    let _ = vmcs.write(field::GUEST_CR0, 0x8000_0031);
    let mut queue = GuestEventQueue::new();
    let (mut queued_nmis, mut injected_nmis) = (0u64, 0u64);
    let mut previous = None;
    // Up to 16 exits, as many as the input describes: `arbitrary` pads a short input with
    // zeros and never fails, so without this test every input ran 16 exits, most of them
    // the same all-zero exit decoded from padding (any such exit is still one the fuzzer can
    // write out: 34 zero bytes).
    for _ in 0..16 {
        if input.is_empty() {
            break;
        }
        let case = ExitCase::decode(&mut input);
        if let Some(exit) = previous.take() {
            vmcs.enter(exit);
        }
        // The VM entry delivered (or, per the next exit's IDT-vectoring info, interrupted) the
        // injected event: hardware clears the valid bit.
        let pending =
            InterruptionInfo::from_raw(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap_or(0));
        if pending.is_valid() && case.entry_consumed {
            let _ = vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, 0);
        }
        let reason = if case.reason_index & 1 == 0 {
            INTERESTING_REASONS[usize::from(case.reason_index / 2) % INTERESTING_REASONS.len()]
        } else {
            case.raw_reason
        };
        let interruption = match case.interruption_kind % 4 {
            0 => case.interruption_info,
            1 => 0x8000_0202 | (case.interruption_info & (1 << 12)),
            2 => 0x8000_0000 | (case.interruption_info & 0xFF),
            _ => 0,
        };
        let qualification = if case.qualification_bit12 {
            case.qualification | (1 << 12)
        } else {
            case.qualification & !(1 << 12)
        };
        // Guest state the rules depend on; STI blocking needs IF=1 (a VM-entry rule the
        // processor enforced on the previous entry).
        let mut blocking = u32::from(case.interruptibility & 0xF);
        if blocking & 3 == 3 || (blocking & 1 != 0 && !case.rflags_if) {
            blocking &= !1;
        }
        let _ = vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, blocking);
        let _ = vmcs.write(field::GUEST_RFLAGS, if case.rflags_if { 0x202 } else { 0x2 });
        let _ = vmcs.write(field::GUEST_ACTIVITY_STATE, u32::from(case.activity % 2));
        let parts = ExitInfoParts {
            reason,
            qualification,
            interruption_info: interruption,
            idt_vectoring_info: case.idt_vectoring,
            idt_vectoring_error_code: case.idt_vectoring_error_code,
            instruction_length: u32::from(case.instruction_length % 17),
            ..ExitInfoParts::default()
        };
        let exit = vmcs.complete_exit();
        let info = ExitInfo::from_parts(&exit, parts);

        // Host side: exactly one re-delivery for a host NMI or an acknowledged interrupt.
        let mut redelivery = CountingRedelivery::default();
        let result = handle_host_event(&mut redelivery, &info, case.acknowledge_on_exit);
        let valid = interruption & 0x8000_0000 != 0;
        let entry_failure = reason & 0x8000_0000 != 0;
        let host_nmi =
            !entry_failure && reason & 0xFFFF == 0 && valid && (interruption >> 8) & 7 == 2;
        let acked = !entry_failure && reason & 0xFFFF == 1 && case.acknowledge_on_exit && valid;
        assert_eq!(redelivery.nmis, u32::from(host_nmi));
        assert_eq!(redelivery.irqs, u32::from(acked));
        if acked {
            assert_eq!(redelivery.last_irq, interruption as u8);
            assert!(matches!(result, Ok((HostEvent::AcknowledgedIrq(_), _))));
        }

        // Guest side.
        let expected_event = idt_vectoring_event(&info, false);
        let expect_restore = nmi_unblocked_by_iret(&info, virtual_nmis);
        let before_entry = vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap_or(0);
        match reinject_idt_vectoring(&mut vmcs, &info, &context) {
            Ok(fixups) => {
                assert_eq!(fixups.nmi_blocking_restored, expect_restore);
                assert_eq!(fixups.reinjected, expected_event);
                if let Some(event) = expected_event {
                    let written = vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap_or(0);
                    assert_eq!(written, event.info.raw(), "re-injected once, same fields");
                    assert_eq!(written & 0x7FF, case.idt_vectoring & 0x7FF);
                }
                let state = vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE).unwrap_or(0);
                if expect_restore && !expected_event.is_some_and(|e| e.info.is_nmi()) {
                    assert_ne!(state & 8, 0, "blocking-by-NMI restored");
                }
            }
            Err(_) => {
                // Refused (an entry rule, or an injection already pending): nothing written.
                assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap_or(0), before_entry);
            }
        }

        // Queue: owed events go in when the guest can take them.
        for _ in 0..(case.queue_nmis % 3) {
            queue.queue_nmi();
            queued_nmis += 1;
        }
        if let Some(vector) = case.queue_irq {
            queue.queue_irq(vector.max(32));
        }
        if let Ok(EntryDecision::Injected(event)) = queue.prepare_entry(&mut vmcs, &context) {
            injected_nmis += u64::from(event.info.is_nmi());
        }
        assert_eq!(
            injected_nmis + u64::from(queue.pending_nmis()) + queue.merged_nmis(),
            queued_nmis,
            "NMIs neither lost nor duplicated"
        );

        // Whatever is left for the next VM entry passes the validator.
        let entry =
            InterruptionInfo::from_raw(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO).unwrap_or(0));
        if entry.is_valid() && entry.raw() != before_entry {
            let guest = hvkit_nmi_reinject::guest::guest_event_state(&vmcs, &context).unwrap();
            let event = EntryEvent {
                info: entry,
                error_code: vmcs.read(field::VM_ENTRY_EXCEPTION_ERROR_CODE).unwrap_or(0),
                instruction_length: vmcs.read(field::VM_ENTRY_INSTRUCTION_LENGTH).unwrap_or(0),
            };
            assert_eq!(entry_check::check(&event, &guest, &context.capabilities), Ok(()));
        }
        previous = Some(exit);
    }
}

/// Arbitrary IPI requests: every IPI the builder produces is a valid ICR combination; invalid
/// requests are typed errors.
pub fn apic_ipi(data: &[u8]) {
    use hvkit_apic::{Destination, FixedTarget, Ipi, IpiError, Mode, Target};
    let mut input = Unstructured::new(data);
    let Ok((kind, vector, destination, logical, shorthand, x2apic)) =
        <(u8, u8, u32, bool, u8, bool)>::arbitrary(&mut input)
    else {
        return;
    };
    let dest = if logical {
        Destination::Logical(destination)
    } else {
        Destination::Physical(destination)
    };
    let target = if shorthand % 2 == 0 { Target::To(dest) } else { Target::AllExcludingSelf };
    let fixed_target = match shorthand % 4 {
        0 => FixedTarget::To(dest),
        1 => FixedTarget::ToSelf,
        2 => FixedTarget::AllIncludingSelf,
        _ => FixedTarget::AllExcludingSelf,
    };
    let ipi = match kind % 7 {
        0 => Ipi::fixed(vector, fixed_target),
        1 => Ipi::lowest_priority(vector, dest),
        2 => Ok(Ipi::nmi(target)),
        3 => Ok(Ipi::smi(target)),
        4 => Ok(Ipi::init(target)),
        5 => Ok(Ipi::startup(vector, target)),
        _ => Ok(Ipi::init_level_deassert()),
    };
    let ipi = match ipi {
        Ok(ipi) => ipi,
        Err(IpiError::ReservedVector { vector: rejected }) => {
            assert!(rejected < 16 && kind % 7 <= 1);
            return;
        }
        Err(other) => panic!("unexpected {other:?}"),
    };
    let mode = if x2apic { Mode::X2Apic } else { Mode::XApic };
    match ipi.encode(mode) {
        Ok(icr) => {
            let low = icr as u32;
            let delivery = (low >> 8) & 7;
            let shorthand = (low >> 18) & 3;
            assert!(matches!(delivery, 0 | 1 | 2 | 4 | 5 | 6), "valid delivery mode");
            assert_eq!(low & (1 << 12), 0, "delivery status is never written");
            if shorthand == 1 || shorthand == 2 {
                let deassert = delivery == 5 && low & (1 << 14) == 0 && shorthand == 2;
                assert!(delivery == 0 || deassert, "self/all-including-self only for fixed");
            }
            if delivery <= 1 {
                assert!(low & 0xFF >= 16, "no reserved vector for fixed/lowest priority");
            }
            if !x2apic {
                assert_eq!(icr >> 32 & 0x00FF_FFFF, 0, "xAPIC destination only in bits 63:56");
            }
        }
        Err(IpiError::DestinationOutOfRange { destination: rejected }) => {
            assert!(!x2apic && rejected > 0xFF);
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
}

/// FRED slots and configuration round-trip; setters touch only their own bits.
pub fn fred_frame(data: &[u8]) {
    use hvkit_fred::{CsSlot, EventType, FredConfig, SsSlot, StackLevels};
    let mut input = Unstructured::new(data);
    let Ok((cs_raw, ss_raw, vector, kind, length, page, red, level, stack_vector)) =
        <(u64, u64, u8, u8, u8, u64, u8, u8, u8)>::arbitrary(&mut input)
    else {
        return;
    };
    let cs = CsSlot::from_raw(cs_raw);
    assert_eq!(cs.raw(), cs_raw);
    assert_eq!(cs.with_stack_level(cs.stack_level()).raw(), cs_raw);
    let ss = SsSlot::from_raw(ss_raw);
    assert_eq!(ss.raw(), ss_raw);
    let changed = ss
        .with_vector(vector)
        .with_event_type(EventType::from_bits(u64::from(kind)))
        .with_instruction_length(length);
    assert_eq!(changed.vector(), vector);
    assert_eq!(changed.event_type().bits(), u64::from(kind & 7));
    assert_eq!(changed.instruction_length(), length & 0xF);
    assert_eq!(
        changed.reserved_bits(),
        ss.reserved_bits() & !(0x8 << 48),
        "reserved bits kept (bit 51 is the type's top bit)"
    );
    assert_eq!(changed.nmi(), ss.nmi());
    match FredConfig::try_new(page, red, level) {
        Ok(config) => {
            assert_eq!(config.entry_page(), page);
            assert_eq!(config.red_zone_units(), red);
            assert_eq!(config.interrupt_stack_level(), level);
            assert_eq!(config.reserved_bits(), 0);
        }
        Err(_) => assert!(
            page & 0xFFF != 0 || red > 7 || level > 3 || !matches!(page >> 47, 0 | 0x1_FFFF)
        ),
    }
    match StackLevels::new().with(stack_vector, level) {
        Ok(levels) => assert_eq!(levels.level(stack_vector), Some(level)),
        Err(_) => assert!(stack_vector > 31 || level > 3),
    }
}

/// The whole exit sequence (host re-delivery, IDT-vectoring re-injection, the guest event
/// queue, VM entry) against the independent model of VMX event delivery (`model`), over
/// every configuration bit a user may have.
pub fn exit_sequence(data: &[u8]) {
    model::driver::run(data);
}

/// The model's VM-entry checks (guest interruptibility and activity state, event injection)
/// against hvkit's entry validator on arbitrary single entries: the two readings of SDM
/// 26.2.1.3 and 26.3.1.5 must agree on every input. Written apart, so a disagreement is a bug
/// in one of them, decided by the SDM text.
pub fn event_model(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<16>() else { return };
    let word = |at: usize| {
        u32::from_le_bytes([
            head[at % 16],
            head[(at + 1) % 16],
            head[(at + 2) % 16],
            head[(at + 3) % 16],
        ])
    };
    let config = model::Config::from_bits(u16::from_le_bytes([head[12], head[13]]));
    let flags = head[14];
    // Mostly plausible fields, sometimes raw ones.
    let info = if flags & 1 != 0 { word(0) } else { word(0) & 0x8000_3FFF };
    let interruptibility = if flags & 2 != 0 { word(8) } else { u32::from(head[8] & 0x1F) };
    let activity = if flags & 4 != 0 { u32::from(head[9]) } else { u32::from(head[9] & 3) };
    let view = model::EntryView {
        pin: if config.virtual_nmis { model::pin::VIRTUAL_NMIS } else { 0 },
        injection: info,
        error_code: if flags & 8 != 0 { word(4) } else { word(4) & 0x1_FFFF },
        length: u32::from(head[10] & 0x1F),
        interruptibility,
        activity,
        rflags_if: flags & 0x10 != 0,
        cr0_pe: config.protected_mode,
        ..model::EntryView::default()
    };
    let _ = rest;
    let verdict = model::check_injection(&config, &view)
        .and_then(|()| model::check_guest_state(&config, &view));
    let event = EntryEvent {
        info: InterruptionInfo::from_raw(view.injection),
        error_code: view.error_code,
        instruction_length: view.length,
    };
    let guest = GuestEventState {
        cr0_pe: view.cr0_pe,
        rflags_if: view.rflags_if,
        interruptibility: GuestInterruptibility::from_bits_retain(view.interruptibility),
        activity: ActivityState::from_raw(view.activity),
        virtual_nmis: config.virtual_nmis,
        unrestricted_guest: config.unrestricted_guest,
    };
    let caps = EntryCapabilities {
        no_error_code_consistency_check: config.basic_56,
        zero_length_injection: config.misc_30,
        monitor_trap_flag: false,
        nested_exception: config.fred,
        fred_guest: config.fred,
        nmi_requires_no_sti_blocking: config.nmi_blocked_by_sti,
        sgx: config.sgx,
    };
    let library = entry_check::check(&event, &guest, &caps);
    assert_eq!(
        library.is_ok(),
        verdict.is_ok(),
        "hvkit {library:?} vs model {verdict:?} for {view:x?} {config:?}"
    );
}

/// `length` bytes from a xorshift64 generator (tests' reproducible inputs).
#[cfg(test)]
pub(crate) fn pseudo_random_bytes(state: &mut u64, length: usize) -> Vec<u8> {
    (0..length)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

#[cfg(test)]
mod exit_case_tests {
    use super::*;

    /// The hand decoder is a speed-up only: on every input (short ones too, which the derive
    /// pads with zeros) it yields the case `ExitCase::arbitrary` yields and consumes the same
    /// bytes, so committed seeds keep their meaning.
    #[test]
    fn hand_decoder_matches_the_derived_arbitrary_on_every_length() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for length in 0..120 {
            for _ in 0..40 {
                let data = crate::pseudo_random_bytes(&mut state, length);
                let (mut derived, mut decoded) =
                    (Unstructured::new(&data), Unstructured::new(&data));
                for _ in 0..4 {
                    let expected = ExitCase::arbitrary(&mut derived).unwrap();
                    assert_eq!(ExitCase::decode(&mut decoded), expected, "{data:?}");
                    assert_eq!(decoded.len(), derived.len(), "same bytes consumed");
                }
            }
        }
        // Both Option arms, explicitly: flag bit 0 set takes one more byte.
        let mut bytes = [0u8; 40];
        bytes[ExitCase::FIXED_LEN - 1] = 1;
        bytes[ExitCase::FIXED_LEN] = 0x42;
        bytes[ExitCase::FIXED_LEN + 1] = 1;
        let case = ExitCase::decode(&mut Unstructured::new(&bytes));
        assert_eq!(case.queue_irq, Some(0x42));
        assert!(case.entry_consumed);
    }
}
