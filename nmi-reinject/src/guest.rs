//! Guest-side event handling: re-injecting an event whose delivery a VM exit interrupted,
//! restoring NMI blocking after "NMI unblocking due to IRET", injecting through the VM-entry
//! validator, queueing events until the guest can take them, and reflecting intercepted
//! exceptions (SDM Vol. 3C 25.2, 26.2.1, 26.3.1.5, 26.6, 27.1, 27.2).
//!
//! Every function here that returns `Err` leaves the VMCS and the queue as they were: the
//! rules are checked before the first VMWRITE, and if a VMWRITE fails the fields already
//! written get their previous values back (on hardware the failed VMWRITE itself still sets
//! the VM-instruction error field).
#![forbid(unsafe_code)]

use core::fmt;
use hvkit_vmx_core::VmFail;
use hvkit_vmx_core::caps::VmxCapabilities;
use hvkit_vmx_core::controls::{
    AdjustedControls, AllowedControls, PinBasedControls, PrimaryControls, SecondaryControls,
};
use hvkit_vmx_core::entry_check::{
    self, EntryCapabilities, EntryCheckError, EntryEvent, GuestEventState,
};
use hvkit_vmx_core::event::{
    ActivityState, GuestInterruptibility, InterruptionInfo, InterruptionType,
};
use hvkit_vmx_core::exit::{BasicExitReason, ExitInfo};
use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::VmcsAccess;

/// An event to inject at the next VM entry.
///
/// ```
/// use hvkit_nmi_reinject::GuestEvent;
/// use hvkit_vmx_core::event::InterruptionType;
///
/// let timer = GuestEvent::external_interrupt(0x20);
/// assert_eq!(timer.info.raw(), 0x8000_0020); // valid, type 0, vector 0x20
/// assert_eq!(GuestEvent::nmi().info.event_type(), InterruptionType::Nmi);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestEvent {
    /// For the VM-entry interruption-information field (valid bit set).
    pub info: InterruptionInfo,
    /// For the VM-entry exception error code (used when bit 11 is set).
    pub error_code: u32,
    /// For the VM-entry instruction length (types 4, 5, 6).
    pub instruction_length: u32,
    /// For INJECTED_EVENT_DATA (FRED guests), when the event has data. When the
    /// [`InjectionContext`] says the field exists, an injection writes this value, or 0 for
    /// `None`, so no injection inherits the data of an earlier one.
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
    if nested_exception_supported && event_type == InterruptionType::HardwareException {
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
/// hypervisor to set blocking-by-NMI again before re-entry (SDM Vol. 3C 27.2.2 "Information for
/// VM Exits Due to Vectored Events" for the exit interruption information, 27.2.1 for the exit
/// qualifications): virtual NMIs on, IDT-vectoring information not valid, and either the exit
/// interruption information is valid with bit 12 set and a vector other than #DF, or the exit
/// is an EPT violation, a page-modification-log-full exit or a NOTIFY exit whose qualification
/// has bit 12 set.
#[inline]
pub fn nmi_unblocked_by_iret(info: &ExitInfo<'_>, virtual_nmis: bool) -> bool {
    if !virtual_nmis || info.idt_vectoring_info.is_valid() || info.reason.is_entry_failure() {
        return false;
    }
    let interruption = info.interruption_info;
    if interruption.is_valid()
        && interruption.nmi_unblocking_due_to_iret()
        && interruption.vector() != hvkit_vmx_core::event::vector::DOUBLE_FAULT
    {
        return true;
    }
    // Compared by number: decoding the whole enum is a table lookup the compiler keeps
    // out of line.
    const EPT_VIOLATION: u16 = BasicExitReason::EptViolation.number();
    const PAGE_MODIFICATION_LOG_FULL: u16 = BasicExitReason::PageModificationLogFull.number();
    const NOTIFY: u16 = BasicExitReason::Notify.number();
    matches!(info.reason.basic_number(), EPT_VIOLATION | PAGE_MODIFICATION_LOG_FULL | NOTIFY)
        && info.qualification & (1 << 12) != 0
}

/// The VM-execution settings and processor capabilities injection depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InjectionContext {
    /// Rules that depend on the processor.
    pub capabilities: EntryCapabilities,
    /// The "virtual NMIs" pin-based control.
    pub virtual_nmis: bool,
    /// The "unrestricted guest" secondary control.
    pub unrestricted_guest: bool,
    /// What the processor allows in the primary processor-based controls (the capability MSR
    /// IA32_VMX_PROCBASED_CTLS, or its TRUE variant): [`GuestEventQueue::prepare_entry`] sets
    /// NMI-window exiting (bit 22) and interrupt-window exiting (bit 2) only where the
    /// allowed-1 half permits it (SDM Vol. 3C 26.2.1.1: otherwise VM entry fails).
    pub primary_controls: AllowedControls,
    /// The processor has the INJECTED_EVENT_DATA field (it virtualizes FRED) and the guest
    /// may use FRED. Then every injection writes INJECTED_EVENT_DATA: the event's data, or 0.
    /// When `false` the field is never touched and event data is not injected (a processor
    /// without the field cannot deliver it).
    pub injected_event_data: bool,
}

impl InjectionContext {
    /// Allowed settings with every primary control allowed to be 0 or 1 (a permissive
    /// processor, for tests and software models).
    pub const ANY_PRIMARY_CONTROLS: AllowedControls =
        AllowedControls { must_be_one: 0, may_be_one: u32::MAX };

    /// The context for a VMCS whose controls were adjusted to `caps`:
    /// - the entry rules from IA32_VMX_BASIC\[56\] and \[58\], IA32_VMX_MISC\[30\] and the
    ///   allowed-1 monitor-trap-flag control (primary bit 27); STI blocking forbids NMI
    ///   injection (the portable choice);
    /// - virtual NMIs and unrestricted guest from the adjusted controls (unrestricted guest
    ///   only counts when the secondary controls are activated);
    /// - the allowed primary controls from `caps`;
    /// - `fred_guest`: the guest may enable CR4.FRED and the processor virtualizes FRED (the
    ///   INJECTED_EVENT_DATA field exists): allows type-7 vectors 1-2 and writes
    ///   INJECTED_EVENT_DATA at every injection.
    pub const fn from_capabilities(
        caps: &VmxCapabilities,
        controls: &AdjustedControls,
        fred_guest: bool,
    ) -> Self {
        let primary_controls = caps.primary_controls();
        let secondary_active =
            controls.primary.contains(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS);
        Self {
            capabilities: EntryCapabilities {
                no_error_code_consistency_check: caps.basic.no_error_code_consistency_check(),
                zero_length_injection: caps.misc.zero_length_injection(),
                monitor_trap_flag: primary_controls
                    .allows_bits(PrimaryControls::MONITOR_TRAP_FLAG.bits()),
                nested_exception: caps.basic.nested_exception(),
                fred_guest,
                nmi_requires_no_sti_blocking: true,
                // SGX is a CPUID feature, not a VMX capability: the strict choice refuses the
                // enclave-interruption bit; a hypervisor with SGX guests sets it.
                sgx: false,
            },
            virtual_nmis: controls.pin.contains(PinBasedControls::VIRTUAL_NMIS),
            unrestricted_guest: secondary_active
                && controls.secondary.contains(SecondaryControls::UNRESTRICTED_GUEST),
            primary_controls,
            injected_event_data: fred_guest,
        }
    }

    /// NMI-window exiting may be used: virtual NMIs are on (SDM 26.2.1.1: NMI-window exiting
    /// without virtual NMIs fails VM entry with error 7) and the processor allows the control.
    pub const fn nmi_window_usable(&self) -> bool {
        self.virtual_nmis
            && self.primary_controls.allows_bits(PrimaryControls::NMI_WINDOW_EXITING.bits())
    }

    /// The processor allows interrupt-window exiting.
    pub const fn interrupt_window_usable(&self) -> bool {
        self.primary_controls.allows_bits(PrimaryControls::INTERRUPT_WINDOW_EXITING.bits())
    }
}

/// Why an injection was not written. In every case the VMCS (and the queue) are as before
/// the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum InjectError {
    /// The event breaks a VM-entry rule; nothing was written.
    EntryCheck(EntryCheckError),
    /// A VMREAD/VMWRITE failed; fields already written were restored.
    Vmcs(VmFail),
    /// An injection is already pending in the VM-entry interruption-information field.
    AlreadyPending {
        /// The pending field.
        pending: InterruptionInfo,
    },
    /// The exit requires blocking by NMI to be set again ("NMI unblocking due to IRET") but an
    /// NMI injection is already pending: with virtual NMIs that VM entry would fail (SDM
    /// 26.3.1.5). Run [`reinject_idt_vectoring`] before injecting anything.
    NmiBlockingWithNmiPending {
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
            Self::NmiBlockingWithNmiPending { pending } => write!(
                f,
                "blocking by NMI must be restored (NMI unblocking due to IRET) but an NMI \
                 injection is already pending ({:#010x}); with virtual NMIs the VM entry would \
                 fail (SDM 26.3.1.5)",
                pending.raw()
            ),
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

/// The fields a call wrote, with their previous values, so that a failing VMWRITE can be
/// undone (at most: event data, error code, length, interruption information,
/// interruptibility, primary controls).
struct Undo {
    saved: [(u32, u64); 6],
    count: usize,
}

impl Undo {
    const fn new() -> Self {
        Self { saved: [(0, 0); 6], count: 0 }
    }

    fn write(
        &mut self,
        vmcs: &mut impl VmcsAccess,
        encoding: u32,
        value: u64,
    ) -> Result<(), VmFail> {
        let previous = vmcs.read_raw(encoding)?;
        vmcs.write_raw(encoding, value)?;
        if let Some(slot) = self.saved.get_mut(self.count) {
            *slot = (encoding, previous);
            self.count += 1;
        }
        Ok(())
    }

    /// Puts back every value written, newest first.
    fn roll_back(&self, vmcs: &mut impl VmcsAccess) {
        for &(encoding, previous) in self.saved.iter().take(self.count).rev() {
            // Best effort: the field was just written successfully, so writing it again
            // succeeds on hardware.
            let _ = vmcs.write_raw(encoding, previous);
        }
    }
}

/// Runs `body`; if it fails, undoes what it wrote.
fn atomically<V: VmcsAccess, T>(
    vmcs: &mut V,
    body: impl FnOnce(&mut Undo, &mut V) -> Result<T, InjectError>,
) -> Result<T, InjectError> {
    let mut undo = Undo::new();
    let result = body(&mut undo, vmcs);
    if result.is_err() {
        undo.roll_back(vmcs);
    }
    result
}

/// Checks `event` against the VM-entry rules for `guest` (nothing written on refusal).
fn check_event(
    event: &GuestEvent,
    guest: &GuestEventState,
    context: &InjectionContext,
) -> Result<(), InjectError> {
    let entry = EntryEvent {
        info: event.info,
        error_code: event.error_code,
        instruction_length: event.instruction_length,
    };
    entry_check::check(&entry, guest, &context.capabilities).map_err(InjectError::EntryCheck)
}

/// Writes an already-checked injection: INJECTED_EVENT_DATA (when the context says it exists;
/// the event's data or 0), the error code and instruction length where used, and the
/// interruption-information field last.
fn write_injection(
    undo: &mut Undo,
    vmcs: &mut impl VmcsAccess,
    event: &GuestEvent,
    context: &InjectionContext,
) -> Result<(), VmFail> {
    if context.injected_event_data {
        let data = event.event_data.unwrap_or(0);
        undo.write(vmcs, field::INJECTED_EVENT_DATA.encoding(), data)?;
    }
    if event.info.error_code_valid() {
        let code = u64::from(event.error_code);
        undo.write(vmcs, field::VM_ENTRY_EXCEPTION_ERROR_CODE.encoding(), code)?;
    }
    if event.info.event_type().uses_instruction_length() {
        let length = u64::from(event.instruction_length);
        undo.write(vmcs, field::VM_ENTRY_INSTRUCTION_LENGTH.encoding(), length)?;
    }
    let info = u64::from(event.info.raw());
    undo.write(vmcs, field::VM_ENTRY_INTERRUPTION_INFO.encoding(), info)
}

/// Injects `event`: checks it against the VM-entry rules and the current guest state first;
/// on success writes INJECTED_EVENT_DATA (when [`InjectionContext::injected_event_data`]:
/// the event's data, or 0 when it has none), the error code and instruction length as needed,
/// and the interruption-information field last. On error the VMCS is as before.
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
    check_event(event, &guest, context)?;
    atomically(vmcs, |undo, vmcs| Ok(write_injection(undo, vmcs, event, context)?))
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
/// interrupted event (clearing blocking-by-NMI if that event is an NMI: its delivery did not
/// complete, so it did not block NMIs yet). Call after
/// [`handle_host_event`](crate::handle_host_event), after fixing what caused the exit, and
/// before injecting anything else.
///
/// Everything is checked before the first write:
/// - re-injection needs no injection pending ([`InjectError::AlreadyPending`]) and must pass
///   the VM-entry checks with the interruptibility it will leave;
/// - restoring blocking by NMI (only with virtual NMIs) is compatible with a pending
///   injection of any other type, but not with a pending NMI injection: with virtual NMIs,
///   injecting an NMI while blocking by NMI is set fails VM entry (SDM 26.3.1.5), and the
///   guest's IRET that was interrupted has to finish its NMI handler before another NMI may
///   arrive. That case returns [`InjectError::NmiBlockingWithNmiPending`]; the caller
///   injected too early.
///
/// ```
/// use hvkit_nmi_reinject::{GuestEvent, InjectionContext, reinject_idt_vectoring};
/// use hvkit_vmx_core::entry_check::EntryCapabilities;
/// use hvkit_vmx_core::exit::{ExitInfo, ExitInfoParts};
/// use hvkit_vmx_core::field;
/// use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};
///
/// let context = InjectionContext {
///     capabilities: EntryCapabilities::STRICT,
///     virtual_nmis: true,
///     unrestricted_guest: false,
///     primary_controls: InjectionContext::ANY_PRIMARY_CONTROLS,
///     injected_event_data: false,
/// };
/// let mut vmcs = SoftVmcs::new();
/// vmcs.write(field::GUEST_CR0, 0x8000_0031)?;
/// vmcs.write(field::GUEST_RFLAGS, 0x202)?;
/// let exit = vmcs.complete_exit();
/// // An EPT violation while the guest's interrupt 0x30 was being delivered.
/// let info = ExitInfo::from_parts(&exit, ExitInfoParts {
///     reason: 48,
///     idt_vectoring_info: 0x8000_0030,
///     ..ExitInfoParts::default()
/// });
/// let fixups = reinject_idt_vectoring(&mut vmcs, &info, &context)?;
/// assert_eq!(fixups.reinjected, Some(GuestEvent::external_interrupt(0x30)));
/// assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO)?, 0x8000_0030);
/// # Ok::<(), hvkit_nmi_reinject::ExitError>(())
/// ```
///
/// On error the VMCS is as before.
#[inline(always)]
pub fn reinject_idt_vectoring(
    vmcs: &mut impl VmcsAccess,
    info: &ExitInfo<'_>,
    context: &InjectionContext,
) -> Result<GuestFixups, InjectError> {
    let restore = nmi_unblocked_by_iret(info, context.virtual_nmis);
    // Nothing to do on most exits: decided inline, before building any event; the rest is out
    // of line so that every call site stays small.
    if !restore && !info.idt_vectoring_info.is_valid() {
        return Ok(GuestFixups::default());
    }
    reinject_idt_vectoring_slow(vmcs, info, context, restore)
}

/// [`reinject_idt_vectoring`] when there is something to do.
#[inline(never)]
fn reinject_idt_vectoring_slow(
    vmcs: &mut impl VmcsAccess,
    info: &ExitInfo<'_>,
    context: &InjectionContext,
    restore: bool,
) -> Result<GuestFixups, InjectError> {
    let event = idt_vectoring_event(info, context.capabilities.nested_exception);
    let pending = InterruptionInfo::from_raw(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO)?);
    let mut guest = guest_event_state(vmcs, context)?;
    let before = guest.interruptibility;
    if restore {
        if pending.is_valid() && pending.event_type() == InterruptionType::Nmi {
            return Err(InjectError::NmiBlockingWithNmiPending { pending });
        }
        guest.interruptibility |= GuestInterruptibility::NMI;
    }
    if let Some(event) = &event {
        if pending.is_valid() {
            return Err(InjectError::AlreadyPending { pending });
        }
        if event.info.event_type() == InterruptionType::Nmi {
            guest.interruptibility -= GuestInterruptibility::NMI;
        }
        check_event(event, &guest, context)?;
    }
    atomically(vmcs, |undo, vmcs| {
        if guest.interruptibility != before {
            let state = u64::from(guest.interruptibility.bits());
            undo.write(vmcs, field::GUEST_INTERRUPTIBILITY_STATE.encoding(), state)?;
        }
        if let Some(event) = &event {
            write_injection(undo, vmcs, event, context)?;
        }
        Ok(GuestFixups { reinjected: event, nmi_blocking_restored: restore })
    })
}

/// Whether an NMI passed to [`GuestEventQueue::queue_nmi`] is owed or merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NmiQueued {
    /// The guest is owed this NMI.
    Owed,
    /// Two NMIs were already owed: this one merged with them, as a processor merges an NMI
    /// that arrives while one is being handled and one is already held pending.
    Merged,
}

/// Events owed to the guest, injected when it can take them, with window exits requested
/// while it cannot.
///
/// - **Interrupts** are a 256-bit vector set: a second request before delivery merges, as in
///   the local APIC's IRR. An interrupt leaves the set only when its injection was written.
/// - **NMIs** are counted and bounded like hardware NMI latching (SDM Vol. 3A 6.7.1): while
///   an NMI is being handled, at most one more is held pending. The queue owes at most two
///   NMIs when the guest has none in service (one to deliver, one to hold) and at most one
///   when it has one in service (blocking by NMI set, or an NMI injection already pending);
///   the excess merges and is counted in [`merged_nmis`](Self::merged_nmis). This is KVM's
///   rule as well.
///
/// ```
/// use hvkit_nmi_reinject::{EntryDecision, GuestEvent, GuestEventQueue, InjectionContext, NmiQueued};
/// use hvkit_vmx_core::entry_check::EntryCapabilities;
/// use hvkit_vmx_core::field;
/// use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};
///
/// let context = InjectionContext {
///     capabilities: EntryCapabilities::STRICT,
///     virtual_nmis: true,
///     unrestricted_guest: false,
///     primary_controls: InjectionContext::ANY_PRIMARY_CONTROLS,
///     injected_event_data: false,
/// };
/// // A protected-mode guest with interrupts enabled and nothing blocking.
/// let mut vmcs = SoftVmcs::new();
/// vmcs.write(field::GUEST_CR0, 0x8000_0031)?;
/// vmcs.write(field::GUEST_RFLAGS, 0x202)?;
///
/// let mut queue = GuestEventQueue::new();
/// queue.queue_irq(0x30);
/// assert_eq!(queue.queue_nmi(), NmiQueued::Owed);
/// // Before each entry: the NMI goes first; the interrupt waits for the next entry.
/// assert_eq!(queue.prepare_entry(&mut vmcs, &context)?, EntryDecision::Injected(GuestEvent::nmi()));
/// assert_eq!(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO)?, 0x8000_0202);
/// assert_eq!(queue.highest_irq(), Some(0x30));
/// # Ok::<(), hvkit_nmi_reinject::ExitError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestEventQueue {
    pending_nmis: u32,
    merged_nmis: u64,
    pending_irqs: [u64; 4],
    /// The last `prepare_entry` left both window controls clear in the VMCS (so, with nothing
    /// owed, the next one has nothing to read or write).
    windows_clear: bool,
}

/// What [`GuestEventQueue::prepare_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EntryDecision {
    /// Nothing owed, windows off. When the previous `prepare_entry` already left the windows
    /// off, this is decided without any VMCS access, so an injection that other code wrote
    /// (a re-injection) is not looked at: it is still delivered, it is just not reported as
    /// [`AlreadyPending`](Self::AlreadyPending).
    Idle,
    /// An injection was already pending (e.g. a re-injection); windows requested as needed.
    AlreadyPending,
    /// This event was injected; windows requested for what is still owed.
    Injected(GuestEvent),
    /// The guest cannot take the next owed event yet: a window exit was requested that
    /// happens when it can (or earlier).
    WindowRequested,
    /// The guest cannot take the owed events and no window exit can tell when it can (see
    /// [`GuestEventQueue::prepare_entry`]): they stay owed until a later VM exit.
    Deferred,
}

/// Highest number of owed NMIs with none in service.
const MAX_OWED_NMIS: u32 = 2;

impl GuestEventQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        Self { pending_nmis: 0, merged_nmis: 0, pending_irqs: [0; 4], windows_clear: false }
    }

    /// Owes the guest one more NMI, unless two are already owed (then it merges; see the type's
    /// documentation).
    pub fn queue_nmi(&mut self) -> NmiQueued {
        if self.pending_nmis < MAX_OWED_NMIS {
            self.pending_nmis += 1;
            NmiQueued::Owed
        } else {
            self.merged_nmis = self.merged_nmis.saturating_add(1);
            NmiQueued::Merged
        }
    }

    /// Owes the guest interrupt `vector` (a second request before delivery merges, as in the
    /// APIC's IRR).
    pub fn queue_irq(&mut self, vector: u8) {
        if let Some(word) = self.pending_irqs.get_mut(usize::from(vector / 64)) {
            *word |= 1 << (vector % 64);
        }
    }

    /// NMIs still owed (0, 1 or 2).
    pub const fn pending_nmis(&self) -> u32 {
        self.pending_nmis
    }

    /// NMIs that merged since the queue was created (by [`queue_nmi`](Self::queue_nmi) or by
    /// [`prepare_entry`](Self::prepare_entry) while one was in service).
    pub const fn merged_nmis(&self) -> u64 {
        self.merged_nmis
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

    /// Before a VM entry: injects the next owed event the guest can take now, and sets or
    /// clears NMI-window and interrupt-window exiting to match what is still owed.
    ///
    /// - **NMI first.** An owed NMI is injected when the guest is in the active, HLT or
    ///   shutdown state (a vectoring VM entry leaves HLT and shutdown, SDM 26.6.2) and has no
    ///   blocking by MOV SS, by STI (when [`EntryCapabilities::nmi_requires_no_sti_blocking`])
    ///   or by NMI (bit 3: virtual-NMI blocking, or with virtual NMIs off the guest's own NMI
    ///   blocking, which lasts until its IRET).
    /// - **Otherwise an interrupt** when the guest is active or in HLT, RFLAGS.IF = 1 and
    ///   there is no STI or MOV-SS blocking — even while an NMI is owed but blocked by NMI:
    ///   the interrupt window would open at once (SDM 25.2) and the guest would never reach
    ///   the IRET that unblocks NMIs.
    /// - **Windows**, only in the active or HLT state (SDM 26.6.5-26.6.6: window exits do
    ///   not occur after an entry into wait-for-SIPI, and would wake a shutdown guest that can
    ///   take no interrupt):
    ///   - NMI-window exiting while an NMI is owed, only with virtual NMIs on and the control
    ///     allowed ([`InjectionContext::nmi_window_usable`]);
    ///   - interrupt-window exiting while an interrupt is owed, and as the NMI window's
    ///     substitute (what KVM does with virtual NMIs off) while an NMI is owed that is
    ///     blocked only by STI or MOV SS: that blocking ends after one instruction. An NMI
    ///     blocked by NMI gets no substitute: the window would open at once whenever IF = 1.
    ///
    ///   Neither control is set where the processor does not allow it.
    /// - **Deferred** otherwise: an interrupt owed in wait-for-SIPI or shutdown, an NMI owed in
    ///   wait-for-SIPI, or one blocked by NMI without a usable NMI window (virtual NMIs off,
    ///   or NMI-window exiting not allowed) waits for the next VM exit of any kind.
    ///
    /// Owed NMIs beyond one merge while the guest has an NMI in service (see the type).
    /// On error the VMCS and the queue are as before.
    #[inline(always)]
    pub fn prepare_entry(
        &mut self,
        vmcs: &mut impl VmcsAccess,
        context: &InjectionContext,
    ) -> Result<EntryDecision, InjectError> {
        // The common case, inline: nothing owed and the windows already clear: no VMCS access
        // at all. (The words are OR-ed: comparing the array with `[0; 4]` becomes a call to
        // `bcmp`.) The rest is out of line so that every call site stays small.
        let [irqs0, irqs1, irqs2, irqs3] = self.pending_irqs;
        if self.windows_clear && self.pending_nmis == 0 && (irqs0 | irqs1 | irqs2 | irqs3) == 0 {
            return Ok(EntryDecision::Idle);
        }
        self.prepare_entry_slow(vmcs, context)
    }

    /// [`prepare_entry`](Self::prepare_entry) when something is owed or a window is set.
    #[inline(never)]
    fn prepare_entry_slow(
        &mut self,
        vmcs: &mut impl VmcsAccess,
        context: &InjectionContext,
    ) -> Result<EntryDecision, InjectError> {
        let pending = InterruptionInfo::from_raw(vmcs.read(field::VM_ENTRY_INTERRUPTION_INFO)?);
        let guest = guest_event_state(vmcs, context)?;
        let blocking = guest.interruptibility;
        let mut next = *self;
        let nmi_in_service = blocking.contains(GuestInterruptibility::NMI)
            || (pending.is_valid() && pending.event_type() == InterruptionType::Nmi);
        if nmi_in_service && next.pending_nmis > 1 {
            next.merged_nmis = next.merged_nmis.saturating_add(u64::from(next.pending_nmis - 1));
            next.pending_nmis = 1;
        }
        let activity = guest.activity;
        let awake = matches!(activity, ActivityState::Active | ActivityState::Hlt);
        let nmi_activity_ok = awake || activity == ActivityState::Shutdown;
        let movss_or_sti = GuestInterruptibility::MOV_SS | GuestInterruptibility::STI;
        let mut nmi_blockers = GuestInterruptibility::MOV_SS | GuestInterruptibility::NMI;
        if context.capabilities.nmi_requires_no_sti_blocking {
            nmi_blockers |= GuestInterruptibility::STI;
        }
        let nmi_takeable = nmi_activity_ok && !blocking.intersects(nmi_blockers);
        let irq_takeable = awake && guest.rflags_if && !blocking.intersects(movss_or_sti);

        let mut injected = None;
        if !pending.is_valid() {
            if next.pending_nmis > 0 && nmi_takeable {
                injected = Some(GuestEvent::nmi());
            } else if let Some(vector) = next.highest_irq().filter(|_| irq_takeable) {
                injected = Some(GuestEvent::external_interrupt(vector));
            }
        }
        if let Some(event) = &injected {
            check_event(event, &guest, context)?;
            if event.info.event_type() == InterruptionType::Nmi {
                next.pending_nmis -= 1;
            } else {
                next.take_irq(event.info.vector());
            }
        }

        // Windows for what is still owed after this entry.
        let nmi_owed = next.pending_nmis > 0;
        let irq_owed = next.highest_irq().is_some();
        // An NMI injected now blocks the next one (bit 3 after delivery).
        let nmi_blocked_by_nmi = blocking.contains(GuestInterruptibility::NMI)
            || injected.is_some_and(|e| e.info.is_nmi());
        // An NMI held back only by STI blocking waits for the interrupt window, not the NMI
        // window: some processors open the NMI window at once under STI blocking although they
        // refuse NMI injection until the STI shadow ends, so every entry would exit again before
        // a guest instruction (a livelock). The interrupt window opens after the next
        // instruction (STI blocking implies IF = 1). Behind NMI blocking the NMI window is safe:
        // it stays shut until the guest's IRET.
        let sti_only = blocking.contains(GuestInterruptibility::STI) && !nmi_blocked_by_nmi;
        let use_nmi_window = context.nmi_window_usable() && !sti_only;
        let nmi_window = awake && nmi_owed && use_nmi_window;
        let nmi_needs_substitute = nmi_owed && !nmi_blocked_by_nmi && !use_nmi_window;
        let interrupt_window =
            awake && (irq_owed || nmi_needs_substitute) && context.interrupt_window_usable();

        let decision = atomically(vmcs, |undo, vmcs| {
            if let Some(event) = &injected {
                write_injection(undo, vmcs, event, context)?;
            }
            let raw = vmcs.read(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)?;
            let mut controls = PrimaryControls::from_bits_retain(raw);
            controls.set(PrimaryControls::NMI_WINDOW_EXITING, nmi_window);
            controls.set(PrimaryControls::INTERRUPT_WINDOW_EXITING, interrupt_window);
            if controls.bits() != raw {
                let encoding = field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS.encoding();
                undo.write(vmcs, encoding, u64::from(controls.bits()))?;
            }
            next.windows_clear = !nmi_window && !interrupt_window;
            Ok(if pending.is_valid() {
                EntryDecision::AlreadyPending
            } else if let Some(event) = injected {
                EntryDecision::Injected(event)
            } else if !nmi_owed && !irq_owed {
                EntryDecision::Idle
            } else if nmi_window || interrupt_window {
                EntryDecision::WindowRequested
            } else {
                EntryDecision::Deferred
            })
        })?;
        *self = next;
        Ok(decision)
    }
}

/// Debug conditions of a #DB that caused a VM exit, from its exit qualification (SDM Vol. 3C
/// 27.2.1, "Exit Qualification for Debug Exceptions": bits 3:0 B0-B3, bit 13 BD, bit 14 BS,
/// bit 16 RTM, all meaning "this condition occurred").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DebugConditions(u64);

impl DebugConditions {
    /// Bits 3:0: breakpoint conditions B0-B3.
    pub const BREAKPOINTS: u64 = 0xF;
    /// Bit 13: BD, debug-register access detected.
    pub const BD: u64 = 1 << 13;
    /// Bit 14: BS, single step.
    pub const BS: u64 = 1 << 14;
    /// Bit 16: RTM, the #DB occurred inside an RTM region (in DR6 this bit is active low).
    pub const RTM: u64 = 1 << 16;
    /// Every defined bit.
    pub const DEFINED: u64 = Self::BREAKPOINTS | Self::BD | Self::BS | Self::RTM;

    /// The defined bits of a #DB exit qualification (other bits dropped).
    pub const fn from_qualification(qualification: u64) -> Self {
        Self(qualification & Self::DEFINED)
    }

    /// The conditions, in the exit-qualification format (positive polarity).
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The guest DR6 value after delivering this #DB, given the guest's DR6 before it. A #DB
    /// that causes a VM exit does not update DR6 (SDM 27.1), so the hypervisor writes this
    /// value into DR6 (MOV to DR6; DR6 is not switched by VM entry and has no VMCS field)
    /// before the VM entry that injects the #DB. Per SDM Vol. 3A 17.2.3: B0-B3 are replaced
    /// by this exception's; BD and BS are set when reported and otherwise kept (the processor
    /// never clears them); RTM (active low) is cleared when reported and set otherwise.
    pub const fn apply_to_dr6(self, dr6: u64) -> u64 {
        let mut value =
            (dr6 & !Self::BREAKPOINTS) | (self.0 & (Self::BREAKPOINTS | Self::BD | Self::BS));
        if self.0 & Self::RTM != 0 {
            value &= !Self::RTM
        } else {
            value |= Self::RTM
        }
        value
    }
}

/// An intercepted exception to give back to the guest, and what the hypervisor must write
/// beside the injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReflectedException {
    /// The event to inject: same type and vector, the exit's error code when valid, the
    /// exit's instruction length for software exceptions (INT1, INT3, INTO). Its event data
    /// (for FRED guests) is the #DB debug conditions or the #PF linear address, else `None`.
    pub event: GuestEvent,
    /// For #DB: the conditions to make visible in DR6 with
    /// [`DebugConditions::apply_to_dr6`] before the entry.
    pub debug: Option<DebugConditions>,
    /// For #PF: the faulting linear address (the exit qualification), which the hypervisor
    /// must write into the guest's CR2 before the entry (a #PF that causes a VM exit does not
    /// update CR2, SDM 27.1).
    pub page_fault_address: Option<u64>,
}

/// Why an exit cannot be reflected as an exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReflectError {
    /// Not an exception exit (basic reason 0 with valid exit interruption information).
    NotAnExceptionExit,
    /// The exit is due to an NMI or a type that is not an exception (an NMI is a host event).
    NotAnException {
        /// The exit interruption information.
        info: InterruptionInfo,
    },
    /// The exception happened while another event was being delivered (IDT-vectoring
    /// information valid). Re-inject that event with [`reinject_idt_vectoring`]: a fault
    /// recurs when delivery is retried, and each recurrence is another VM exit, so the host
    /// keeps control (the point of intercepting #DB and #AC).
    DuringEventDelivery {
        /// The IDT-vectoring information.
        vectoring: InterruptionInfo,
    },
}

impl fmt::Display for ReflectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnExceptionExit => write!(f, "not an exception VM exit (basic reason 0)"),
            Self::NotAnException { info } => {
                write!(f, "exit interruption info {:#010x} is not an exception", info.raw())
            }
            Self::DuringEventDelivery { vectoring } => write!(
                f,
                "exception during delivery of {:#010x}: re-inject that event instead",
                vectoring.raw()
            ),
        }
    }
}

impl core::error::Error for ReflectError {}

/// The event that reflects an intercepted exception (an exit with basic reason 0 for a
/// hardware exception, or a privileged or software exception: INT1, INT3, INTO) back to the
/// guest. Use it for the exceptions an [`ExceptionBitmap`] intercepts (#DB and #AC always).
///
/// Before the VM entry that injects `event` (with [`inject`]), the hypervisor must:
/// - for #DB (hardware exception, vector 1): write
///   `debug.apply_to_dr6(current guest DR6)` into DR6;
/// - for #PF: write `page_fault_address` into the guest's CR2.
///
/// The "NMI unblocking due to IRET" bit of the exit is handled by [`reinject_idt_vectoring`],
/// which must run first.
///
/// [`ExceptionBitmap`]: hvkit_vmx_core::exception_bitmap::ExceptionBitmap
pub fn reflected_exception(info: &ExitInfo<'_>) -> Result<ReflectedException, ReflectError> {
    if info.reason.is_entry_failure() || info.reason.basic() != BasicExitReason::ExceptionOrNmi {
        return Err(ReflectError::NotAnExceptionExit);
    }
    let exit_info = info.interruption_info;
    if !exit_info.is_valid() {
        return Err(ReflectError::NotAnExceptionExit);
    }
    let event_type = exit_info.event_type();
    if !matches!(
        event_type,
        InterruptionType::HardwareException
            | InterruptionType::PrivilegedSoftwareException
            | InterruptionType::SoftwareException
    ) {
        return Err(ReflectError::NotAnException { info: exit_info });
    }
    if info.idt_vectoring_info.is_valid() {
        return Err(ReflectError::DuringEventDelivery { vectoring: info.idt_vectoring_info });
    }
    let vector = exit_info.vector();
    let error_code_valid = exit_info.error_code_valid();
    let raw = InterruptionInfo::VALID
        | (event_type.bits() << 8)
        | u32::from(vector)
        | if error_code_valid { InterruptionInfo::ERROR_CODE } else { 0 };
    let hardware = event_type == InterruptionType::HardwareException;
    let debug = (hardware && vector == hvkit_vmx_core::event::vector::DEBUG)
        .then(|| DebugConditions::from_qualification(info.qualification));
    let page_fault_address = (hardware && vector == hvkit_vmx_core::event::vector::PAGE_FAULT)
        .then_some(info.qualification);
    let event_data = match (debug, page_fault_address) {
        (Some(conditions), _) => Some(conditions.raw()),
        (None, address) => address,
    };
    Ok(ReflectedException {
        event: GuestEvent {
            info: InterruptionInfo::from_raw(raw),
            error_code: if error_code_valid { info.interruption_error_code } else { 0 },
            instruction_length: if event_type.uses_instruction_length() {
                info.instruction_length
            } else {
                0
            },
            event_data,
        },
        debug,
        page_fault_address,
    })
}
