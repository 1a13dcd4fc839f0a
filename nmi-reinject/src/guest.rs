//! Guest-side event handling: re-injecting an event whose delivery a VM exit interrupted,
//! restoring NMI blocking after "NMI unblocking due to IRET", injecting through the VM-entry
//! validator, and queueing events until the guest can take them (shared/FACTS.md sections 6-7).
#![forbid(unsafe_code)]

use core::fmt;
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::controls::PrimaryControls;
use hvkit_vmx_core::entry_check::{
    self, EntryCapabilities, EntryCheckError, EntryEvent, GuestEventState,
};
use hvkit_vmx_core::event::{ActivityState, EventType, GuestInterruptibility, InterruptionInfo};
use hvkit_vmx_core::exit::{BasicExitReason, ExitInfo};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::VmcsAccess;

/// An event to inject at the next VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestEvent {
    /// For the VM-entry interruption-information field (valid bit set).
    pub info: InterruptionInfo,
    /// For the VM-entry exception error code (used when bit 11 is set).
    pub error_code: u32,
    /// For the VM-entry instruction length (types 4, 5, 6).
    pub instruction_length: u32,
    /// For INJECTED_EVENT_DATA (FRED guests), when known.
    pub event_data: Option<u64>,
}

impl GuestEvent {
    /// An NMI.
    pub const fn nmi() -> Self {
        Self {
            info: InterruptionInfo::nmi(),
            error_code: 0,
            instruction_length: 0,
            event_data: None,
        }
    }

    /// An external interrupt with `vector`.
    pub const fn external_interrupt(vector: u8) -> Self {
        let info = InterruptionInfo::external_interrupt(vector);
        Self { info, error_code: 0, instruction_length: 0, event_data: None }
    }
}

/// The event to re-inject because the exit interrupted its delivery (IDT-vectoring
/// information valid), or `None`. `nested_exception_supported` keeps bit 13 (FRED guests).
///
/// Re-injection uses the same type and vector, the IDT-vectoring error code when bit 11 is
/// set, the VM-exit instruction length for types 4-6, and the original event data as injected
/// event data. For an NMI the caller must also clear blocking-by-NMI (see
/// [`reinject_idt_vectoring`], which does it).
pub fn idt_vectoring_event(
    info: &ExitInfo<'_>,
    nested_exception_supported: bool,
) -> Option<GuestEvent> {
    let vectoring = info.idt_vectoring_info;
    if !vectoring.is_valid() {
        return None;
    }
    let event_type = vectoring.event_type();
    let mut raw = InterruptionInfo::VALID
        | (event_type.bits() << 8)
        | u32::from(vectoring.vector())
        | (vectoring.raw() & InterruptionInfo::ERROR_CODE);
    if nested_exception_supported && event_type == EventType::HardwareException {
        raw |= vectoring.raw() & InterruptionInfo::NESTED_EXCEPTION;
    }
    let info_out = InterruptionInfo::from_raw(raw);
    Some(GuestEvent {
        info: info_out,
        error_code: if info_out.error_code_valid() { info.idt_vectoring_error_code } else { 0 },
        instruction_length: if event_type.uses_instruction_length() {
            info.instruction_length
        } else {
            0
        },
        event_data: info.original_event_data,
    })
}

/// `true` when the exit reports "NMI unblocking due to IRET" in a way that obliges the
/// hypervisor to set blocking-by-NMI again before re-entry (shared/FACTS.md section 6): virtual
/// NMIs on, IDT-vectoring information not valid, and either the exit interruption information is
/// valid with bit 12 set and a vector other than #DF, or the exit is an EPT violation, a
/// page-modification-log-full exit or a NOTIFY exit whose qualification has bit 12 set.
pub fn nmi_unblocked_by_iret(info: &ExitInfo<'_>, virtual_nmis: bool) -> bool {
    if !virtual_nmis || info.idt_vectoring_info.is_valid() {
        return false;
    }
    let interruption = info.interruption_info;
    let from_interruption = interruption.is_valid()
        && interruption.nmi_unblocking_due_to_iret()
        && interruption.vector() != hvkit_vmx_core::event::vector::DOUBLE_FAULT;
    let from_qualification = matches!(
        info.reason.basic(),
        BasicExitReason::EptViolation
            | BasicExitReason::PageModificationLogFull
            | BasicExitReason::Notify
    ) && info.qualification & (1 << 12) != 0;
    !info.reason.is_entry_failure() && (from_interruption || from_qualification)
}

/// The VM-execution settings injection depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InjectionContext {
    /// Rules that depend on the processor.
    pub capabilities: EntryCapabilities,
    /// The "virtual NMIs" pin-based control.
    pub virtual_nmis: bool,
    /// The "unrestricted guest" secondary control.
    pub unrestricted_guest: bool,
}

/// Why an injection was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InjectError {
    /// The event breaks a VM-entry rule; nothing was written.
    EntryCheck(EntryCheckError),
    /// A VMREAD/VMWRITE failed.
    Vmcs(VmFail),
    /// An injection is already pending in the VM-entry interruption-information field.
    AlreadyPending {
        /// The pending field.
        pending: InterruptionInfo,
    },
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EntryCheck(error) => write!(f, "injection refused: {error}"),
            Self::Vmcs(fail) => write!(f, "VMCS access failed: {fail}"),
            Self::AlreadyPending { pending } => {
                write!(f, "an injection is already pending ({:#010x})", pending.raw())
            }
        }
    }
}

impl core::error::Error for InjectError {}

impl From<VmFail> for InjectError {
    fn from(fail: VmFail) -> Self {
        Self::Vmcs(fail)
    }
}

/// Reads the guest state the injection rules look at.
pub fn guest_event_state(
    vmcs: &impl VmcsAccess,
    context: &InjectionContext,
) -> Result<GuestEventState, VmFail> {
    Ok(GuestEventState {
        cr0_pe: vmcs.read(field::GUEST_CR0)? & 1 != 0,
        rflags_if: vmcs.read(field::GUEST_RFLAGS)? & (1 << 9) != 0,
        interruptibility: GuestInterruptibility::from_bits_retain(
            vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE)?,
        ),
        activity: ActivityState::from_raw(vmcs.read(field::GUEST_ACTIVITY_STATE)?),
        virtual_nmis: context.virtual_nmis,
        unrestricted_guest: context.unrestricted_guest,
    })
}

/// Injects `event`: checks it against the VM-entry rules and the current guest state first;
/// on success writes the error code, instruction length and event data as needed, and the
/// interruption-information field last. On error nothing is written.
pub fn inject(
    vmcs: &mut impl VmcsAccess,
    event: &GuestEvent,
    context: &InjectionContext,
) -> Result<(), InjectError> {
    let pending = InterruptionInfo::from_raw(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO)?);
    if pending.is_valid() {
        return Err(InjectError::AlreadyPending { pending });
    }
    let guest = guest_event_state(vmcs, context)?;
    let entry = EntryEvent {
        info: event.info,
        error_code: event.error_code,
        instruction_length: event.instruction_length,
    };
    entry_check::check(&entry, &guest, &context.capabilities).map_err(InjectError::EntryCheck)?;
    if event.info.error_code_valid() {
        vmcs.write(field::VM_ENTRY_EXCEPTION_ERROR_CODE, event.error_code)?;
    }
    if event.info.event_type().uses_instruction_length() {
        vmcs.write(field::VM_ENTRY_INSTRUCTION_LENGTH, event.instruction_length)?;
    }
    if let Some(data) = event.event_data {
        vmcs.write(field::INJECTED_EVENT_DATA, data)?;
    }
    vmcs.write(field::VM_ENTRY_INTERRUPTION_INFO, event.info.raw())?;
    Ok(())
}

fn update_interruptibility(
    vmcs: &mut impl VmcsAccess,
    change: impl FnOnce(GuestInterruptibility) -> GuestInterruptibility,
) -> Result<(), VmFail> {
    let current =
        GuestInterruptibility::from_bits_retain(vmcs.read(field::GUEST_INTERRUPTIBILITY_STATE)?);
    vmcs.write(field::GUEST_INTERRUPTIBILITY_STATE, change(current).bits())
}

/// What the guest-side exit processing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestFixups {
    /// An interrupted event was re-injected.
    pub reinjected: Option<GuestEvent>,
    /// Blocking-by-NMI was set again (NMI unblocking due to IRET).
    pub nmi_blocking_restored: bool,
}

/// The guest side of every exit: restore NMI blocking when the rule says so, and re-inject an
/// interrupted event (clearing blocking-by-NMI first if that event is an NMI). Call after
/// [`handle_host_event`](crate::handle_host_event) and after fixing what caused the exit.
pub fn reinject_idt_vectoring(
    vmcs: &mut impl VmcsAccess,
    info: &ExitInfo<'_>,
    context: &InjectionContext,
) -> Result<GuestFixups, InjectError> {
    let mut fixups = GuestFixups::default();
    if nmi_unblocked_by_iret(info, context.virtual_nmis) {
        update_interruptibility(vmcs, |state| state | GuestInterruptibility::NMI)?;
        fixups.nmi_blocking_restored = true;
    }
    if let Some(event) = idt_vectoring_event(info, context.capabilities.nested_exception) {
        if event.info.event_type() == EventType::Nmi {
            // The NMI's delivery faulted: it did not block NMIs yet.
            update_interruptibility(vmcs, |state| state - GuestInterruptibility::NMI)?;
        }
        inject(vmcs, &event, context)?;
        fixups.reinjected = Some(event);
    }
    Ok(fixups)
}

/// Events owed to the guest, injected when it can take them, with NMI-window and
/// interrupt-window exiting requested while it cannot. Nothing is lost (counts and a 256-bit
/// vector set) and nothing is duplicated (an event leaves the queue only when written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestEventQueue {
    pending_nmis: u32,
    pending_irqs: [u64; 4],
}

/// What [`GuestEventQueue::prepare_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EntryDecision {
    /// Nothing pending, windows off.
    Idle,
    /// An injection was already pending (e.g. a re-injection); windows requested as needed.
    AlreadyPending,
    /// This event was injected.
    Injected(GuestEvent),
    /// The guest cannot take the next event yet: the window exit was requested.
    WindowRequested,
}

impl GuestEventQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        Self { pending_nmis: 0, pending_irqs: [0; 4] }
    }

    /// Owes the guest one more NMI.
    pub fn queue_nmi(&mut self) {
        self.pending_nmis = self.pending_nmis.saturating_add(1);
    }

    /// Owes the guest interrupt `vector` (a second request before delivery merges, as in the
    /// APIC's IRR).
    pub fn queue_irq(&mut self, vector: u8) {
        if let Some(word) = self.pending_irqs.get_mut(usize::from(vector / 64)) {
            *word |= 1 << (vector % 64);
        }
    }

    /// NMIs still owed.
    pub const fn pending_nmis(&self) -> u32 {
        self.pending_nmis
    }

    /// The highest owed interrupt vector.
    pub fn highest_irq(&self) -> Option<u8> {
        (0..4u8).rev().find_map(|index| {
            let word = self.pending_irqs.get(usize::from(index)).copied().unwrap_or(0);
            (word != 0).then(|| index * 64 + (63 - word.leading_zeros() as u8))
        })
    }

    fn take_irq(&mut self, vector: u8) {
        if let Some(word) = self.pending_irqs.get_mut(usize::from(vector / 64)) {
            *word &= !(1 << (vector % 64));
        }
    }

    /// Before a VM entry: injects the next owed event the guest can take now (NMIs first), and
    /// sets or clears NMI-window and interrupt-window exiting to match what is still owed.
    pub fn prepare_entry(
        &mut self,
        vmcs: &mut impl VmcsAccess,
        context: &InjectionContext,
    ) -> Result<EntryDecision, InjectError> {
        let pending = InterruptionInfo::from_raw(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO)?);
        let guest = guest_event_state(vmcs, context)?;
        let blocking = guest.interruptibility;
        let decision = if pending.is_valid() {
            EntryDecision::AlreadyPending
        } else if self.pending_nmis > 0 && self.can_take_nmi(&guest, context) {
            let event = GuestEvent::nmi();
            inject(vmcs, &event, context)?;
            self.pending_nmis -= 1;
            EntryDecision::Injected(event)
        } else if let Some(vector) = self.highest_irq().filter(|_| {
            self.pending_nmis == 0
                && guest.rflags_if
                && !blocking.intersects(GuestInterruptibility::STI | GuestInterruptibility::MOV_SS)
        }) {
            let event = GuestEvent::external_interrupt(vector);
            inject(vmcs, &event, context)?;
            self.take_irq(vector);
            EntryDecision::Injected(event)
        } else if self.pending_nmis > 0 || self.highest_irq().is_some() {
            EntryDecision::WindowRequested
        } else {
            EntryDecision::Idle
        };
        self.update_windows(vmcs)?;
        Ok(decision)
    }

    fn can_take_nmi(&self, guest: &GuestEventState, context: &InjectionContext) -> bool {
        let mut blocked_by = GuestInterruptibility::MOV_SS;
        if context.capabilities.nmi_requires_no_sti_blocking {
            blocked_by |= GuestInterruptibility::STI;
        }
        if context.virtual_nmis {
            blocked_by |= GuestInterruptibility::NMI;
        }
        !guest.interruptibility.intersects(blocked_by)
    }

    /// Window exiting on exactly while something is still owed: after an injection the next
    /// owed event needs another window (the guest is busy with the injected one).
    fn update_windows(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
        let raw = vmcs.read(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)?;
        let mut controls = PrimaryControls::from_bits_retain(raw);
        controls.set(PrimaryControls::NMI_WINDOW_EXITING, self.pending_nmis > 0);
        controls.set(PrimaryControls::INTERRUPT_WINDOW_EXITING, self.highest_irq().is_some());
        if controls.bits() != raw {
            vmcs.write(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, controls.bits())?;
        }
        Ok(())
    }
}
