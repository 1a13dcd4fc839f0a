//! An independent model of VMX event delivery, written from the Intel SDM (Vol. 3C: 25.2
//! "Other causes of VM exits", 25.3 "Changes to instruction behavior" (IRET), 26.2.1.1 and
//! 26.2.1.3 "Checks on VMX controls", 26.3.1.5 "Checks on guest non-register state", 26.6
//! "Event injection" / 26.7 "Special features of VM entry", 28.2.3-28.2.4 "Information for VM
//! exits during event delivery" and "NMI unblocking due to IRET").
//!
//! The model has its own types and its own reading of the rules; it never calls hvkit's entry
//! validator or guest-side logic. It plays the processor for the fuzz targets: it reads back
//! what the library left in a `SoftVmcs` before each VM entry, checks the entry, delivers the
//! injected event into an abstract guest, runs abstract guest steps, and writes the exit
//! information of the next VM exit. Everything is fixed-size: no allocation.
//!
//! Simplifications (stated, so they are judged, not hidden):
//! - Every IDT/FRED gate is an interrupt gate: delivering any event clears RFLAGS.IF, and the
//!   guest's return (IRET/ERETS) restores it from the frame.
//! - Host NMIs and interrupts are recognised only at instruction boundaries without STI or
//!   MOV-SS blocking (the model lets the guest step first).
//! - With virtual NMIs off and NMI exiting on, blocking by NMI loaded by VM entry lasts for the
//!   whole of VMX non-root operation and IRET does not clear it (SDM 26.7.1); a host NMI that
//!   arrives then is held by the processor and taken by the host after the next exit, so it
//!   never reaches the library.
//! - The modelled processor supports HLT, shutdown and wait-for-SIPI, no SMM, no MTF; SGX is a
//!   configuration bit (enclave-interruption blocking needs it).

pub mod driver;

use hvkit_vmx_core::field;
use hvkit_vmx_core::vmcs::{SoftVmcs, VmcsAccess};

/// Pin-based control bits (SDM Table 25-5).
pub mod pin {
    /// External-interrupt exiting.
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    /// NMI exiting.
    pub const NMI_EXITING: u32 = 1 << 3;
    /// Virtual NMIs.
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    /// Default-1 bits (allowed-0 settings of IA32_VMX_PINBASED_CTLS).
    pub const DEFAULT1: u32 = 0x16;
}

/// Primary processor-based control bits (SDM Table 25-6).
pub mod primary {
    /// Interrupt-window exiting.
    pub const INTERRUPT_WINDOW: u32 = 1 << 2;
    /// NMI-window exiting.
    pub const NMI_WINDOW: u32 = 1 << 22;
    /// Activate secondary controls.
    pub const SECONDARY: u32 = 1 << 31;
    /// Default-1 bits (allowed-0 settings of IA32_VMX_PROCBASED_CTLS).
    pub const DEFAULT1: u32 = 0x0401_E172;
}

/// Primary VM-exit control bits (SDM Table 25-13).
pub mod exit_controls {
    /// Acknowledge interrupt on exit.
    pub const ACKNOWLEDGE_INTERRUPT: u32 = 1 << 15;
    /// Default-1 bits.
    pub const DEFAULT1: u32 = 0x0003_6DFF;
}

/// Secondary processor-based control: unrestricted guest (bit 7).
pub const UNRESTRICTED_GUEST: u32 = 1 << 7;

/// Interruptibility-state bits (SDM Table 25-3).
pub mod blocking {
    /// Blocking by STI.
    pub const STI: u32 = 1 << 0;
    /// Blocking by MOV SS.
    pub const MOV_SS: u32 = 1 << 1;
    /// Blocking by SMI.
    pub const SMI: u32 = 1 << 2;
    /// Blocking by NMI (virtual-NMI blocking when virtual NMIs are on).
    pub const NMI: u32 = 1 << 3;
    /// Enclave interruption.
    pub const ENCLAVE: u32 = 1 << 4;
}

/// The user configuration and processor capabilities the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// The hypervisor sets "virtual NMIs" (and so must set "NMI exiting").
    pub virtual_nmis: bool,
    /// IA32_VMX_PROCBASED_CTLS allows NMI-window exiting to be 1.
    pub nmi_window_allowed: bool,
    /// The hypervisor sets "acknowledge interrupt on exit".
    pub acknowledge_on_exit: bool,
    /// "Unrestricted guest" is 1.
    pub unrestricted_guest: bool,
    /// Guest CR0.PE (0 only with unrestricted guest).
    pub protected_mode: bool,
    /// IA32_VMX_BASIC\[56\]: no deliver-error-code consistency check.
    pub basic_56: bool,
    /// IA32_VMX_MISC\[30\]: software events may be injected with instruction length 0.
    pub misc_30: bool,
    /// The guest uses FRED and the processor has nested-exception support (BASIC\[58\]).
    pub fred: bool,
    /// This processor also blocks NMIs after STI (the SDM allows it).
    pub nmi_blocked_by_sti: bool,
    /// The processor supports SGX (enclave-interruption blocking may be 1).
    pub sgx: bool,
}

impl Config {
    /// A configuration from two fuzz bytes; PE=0 only with unrestricted guest, FRED only in
    /// protected (IA-32e) mode.
    pub fn from_bits(bits: u16) -> Self {
        let bit = |n: u32| bits & (1 << n) != 0;
        let unrestricted_guest = bit(3);
        let protected_mode = !unrestricted_guest || !bit(4);
        Self {
            virtual_nmis: bit(0),
            nmi_window_allowed: bit(1),
            acknowledge_on_exit: bit(2),
            unrestricted_guest,
            protected_mode,
            basic_56: bit(5),
            misc_30: bit(6),
            fred: bit(7) && protected_mode,
            nmi_blocked_by_sti: bit(8),
            sgx: bit(9),
        }
    }

    /// The allowed-1 settings of the primary processor-based controls.
    pub fn primary_allowed1(&self) -> u32 {
        if self.nmi_window_allowed { u32::MAX } else { !primary::NMI_WINDOW }
    }

    /// The allowed-1 settings of the pin-based controls.
    pub fn pin_allowed1(&self) -> u32 {
        pin::DEFAULT1 | pin::EXTERNAL_INTERRUPT_EXITING | pin::NMI_EXITING | pin::VIRTUAL_NMIS
    }
}

/// An event's kind, numbered as the interruption-type field (SDM Table 25-17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// External interrupt (0).
    External = 0,
    /// NMI (2).
    Nmi = 2,
    /// Hardware exception (3).
    HardwareException = 3,
    /// Software interrupt, INT n (4).
    SoftwareInterrupt = 4,
    /// Privileged software exception, INT1 (5).
    PrivilegedSoftwareException = 5,
    /// Software exception, INT3/INTO (6).
    SoftwareException = 6,
}

impl Kind {
    fn from_number(number: u32) -> Option<Self> {
        Some(match number {
            0 => Self::External,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => return None,
        })
    }

    /// Kinds whose delivery uses the instruction length (4, 5, 6).
    pub fn has_length(self) -> bool {
        matches!(
            self,
            Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException
        )
    }
}

/// One event in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Kind.
    pub kind: Kind,
    /// Vector.
    pub vector: u8,
    /// The error code delivered, if one is.
    pub error_code: Option<u32>,
    /// Instruction length (kinds 4-6 only; else 0).
    pub length: u32,
    /// FRED nested-exception flag (hardware exceptions only).
    pub nested: bool,
    /// FRED event data.
    pub data: u64,
}

impl Event {
    /// A plain event of `kind` with `vector`.
    pub const fn new(kind: Kind, vector: u8) -> Self {
        Self { kind, vector, error_code: None, length: 0, nested: false, data: 0 }
    }

    /// An NMI.
    pub const fn nmi() -> Self {
        Self::new(Kind::Nmi, 2)
    }

    /// The interruption-information encoding (valid bit set; SDM Table 25-17).
    pub fn info(&self) -> u32 {
        (1 << 31)
            | (self.kind as u32) << 8
            | u32::from(self.vector)
            | u32::from(self.error_code.is_some()) << 11
            | u32::from(self.nested) << 13
    }
}

/// Vectors of exceptions that push an error code in protected mode (SDM 26.2.1.3).
pub fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17)
}

/// A broken rule: which one, in the SDM's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 26.2.1.1: "virtual NMIs" = 1 requires "NMI exiting" = 1.
    VirtualNmisWithoutNmiExiting,
    /// 26.2.1.1: "NMI-window exiting" = 1 requires "virtual NMIs" = 1.
    NmiWindowWithoutVirtualNmis,
    /// 26.2.1.1: a control is 1 where the capability MSR's allowed-1 bit is 0, or 0 where its
    /// allowed-0 bit is 1 (`which`: 0 pin, 1 primary, 2 exit).
    ControlNotAllowed {
        /// Which control field.
        which: u8,
        /// Its value.
        value: u32,
    },
    /// 26.3.1.5: activity state not 0-3.
    ActivityState(u32),
    /// 26.3.1.5: reserved interruptibility bits, or SMI blocking outside SMM.
    InterruptibilityReserved(u32),
    /// 26.3.1.5: STI and MOV-SS blocking together.
    StiAndMovSs,
    /// 26.3.1.5: STI blocking with RFLAGS.IF = 0.
    StiWithoutIf,
    /// 26.3.1.5: STI or MOV-SS blocking with an activity state other than active.
    BlockingWhileInactive,
    /// 26.3.1.5: enclave-interruption blocking together with MOV-SS blocking.
    EnclaveWithMovSs,
    /// 26.3.1.5: enclave-interruption blocking on a processor without SGX.
    EnclaveWithoutSgx,
    /// 26.3.1.5: an event injected that the activity state blocks.
    InjectionBlockedByActivity {
        /// Activity state.
        activity: u32,
        /// Injection field.
        info: u32,
    },
    /// 26.3.1.5: external interrupt injected with IF=0 or STI/MOV-SS blocking.
    InterruptInjectedWhileBlocked,
    /// 26.3.1.5: NMI injected under MOV-SS (or, on this processor, STI) blocking.
    NmiInjectedWhileBlocked,
    /// 26.3.1.5: NMI injected with virtual NMIs on and virtual-NMI blocking set.
    NmiInjectedWithVirtualNmiBlocking,
    /// 26.2.1.3: interruption type 1 or 7 (no MTF here).
    ReservedType(u32),
    /// 26.2.1.3: NMI with a vector other than 2, or exception vector above 31.
    BadVector(u32),
    /// 26.2.1.3: deliver-error-code does not match the type, vector and CR0.PE.
    ErrorCodeMismatch(u32),
    /// 26.2.1.3: reserved bits 30:12 set (bit 13 only with nested-exception support, type 3).
    InjectionReserved(u32),
    /// 26.2.1.3: error code bits 31:16 not 0.
    ErrorCodeHigh(u32),
    /// 26.2.1.3: instruction length out of 1-15 (0 only with IA32_VMX_MISC\[30\]).
    InstructionLength(u32),
}

/// What the library left in the VMCS for the next VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryView {
    /// Pin-based controls.
    pub pin: u32,
    /// Primary processor-based controls.
    pub primary: u32,
    /// Primary VM-exit controls.
    pub exit: u32,
    /// VM-entry interruption information.
    pub injection: u32,
    /// VM-entry exception error code.
    pub error_code: u32,
    /// VM-entry instruction length.
    pub length: u32,
    /// Injected event data (FRED).
    pub event_data: u64,
    /// Guest interruptibility state.
    pub interruptibility: u32,
    /// Guest activity state.
    pub activity: u32,
    /// Guest RFLAGS.IF.
    pub rflags_if: bool,
    /// Guest CR0.PE.
    pub cr0_pe: bool,
}

impl EntryView {
    /// Reads the fields a VM entry looks at.
    pub fn read(vmcs: &SoftVmcs) -> Self {
        let r = |encoding: u32| vmcs.read_raw(encoding).unwrap_or(0);
        Self {
            pin: r(field::PIN_BASED_VM_EXECUTION_CONTROLS.encoding()) as u32,
            primary: r(field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS.encoding()) as u32,
            exit: r(field::PRIMARY_VM_EXIT_CONTROLS.encoding()) as u32,
            injection: r(field::VM_ENTRY_INTERRUPTION_INFO.encoding()) as u32,
            error_code: r(field::VM_ENTRY_EXCEPTION_ERROR_CODE.encoding()) as u32,
            length: r(field::VM_ENTRY_INSTRUCTION_LENGTH.encoding()) as u32,
            event_data: r(field::INJECTED_EVENT_DATA.encoding()),
            interruptibility: r(field::GUEST_INTERRUPTIBILITY_STATE.encoding()) as u32,
            activity: r(field::GUEST_ACTIVITY_STATE.encoding()) as u32,
            rflags_if: r(field::GUEST_RFLAGS.encoding()) & (1 << 9) != 0,
            cr0_pe: r(field::GUEST_CR0.encoding()) & 1 != 0,
        }
    }

    /// The injected event, if the valid bit is set and the type is one the model knows.
    pub fn injected(&self) -> Option<Event> {
        if self.injection & (1 << 31) == 0 {
            return None;
        }
        let kind = Kind::from_number((self.injection >> 8) & 7)?;
        Some(Event {
            kind,
            vector: self.injection as u8,
            error_code: (self.injection & (1 << 11) != 0).then_some(self.error_code),
            length: if kind.has_length() { self.length } else { 0 },
            nested: self.injection & (1 << 13) != 0,
            data: self.event_data,
        })
    }
}

/// The VM-entry checks on controls (26.2.1.1) for the bits event handling touches.
pub fn check_controls(config: &Config, view: &EntryView) -> Result<(), Violation> {
    if view.pin & pin::VIRTUAL_NMIS != 0 && view.pin & pin::NMI_EXITING == 0 {
        return Err(Violation::VirtualNmisWithoutNmiExiting);
    }
    if view.primary & primary::NMI_WINDOW != 0 && view.pin & pin::VIRTUAL_NMIS == 0 {
        return Err(Violation::NmiWindowWithoutVirtualNmis);
    }
    let fields = [
        (0, view.pin, pin::DEFAULT1, config.pin_allowed1()),
        (1, view.primary, primary::DEFAULT1, config.primary_allowed1()),
        (2, view.exit, exit_controls::DEFAULT1, u32::MAX),
    ];
    for (which, value, allowed0, allowed1) in fields {
        if value & allowed0 != allowed0 || value & !allowed1 != 0 {
            return Err(Violation::ControlNotAllowed { which, value });
        }
    }
    Ok(())
}

/// The checks on guest interruptibility and activity state (26.3.1.5), including those tied
/// to the event being injected.
pub fn check_guest_state(config: &Config, view: &EntryView) -> Result<(), Violation> {
    let state = view.interruptibility;
    let sti = state & blocking::STI != 0;
    let mov_ss = state & blocking::MOV_SS != 0;
    if view.activity > 3 {
        return Err(Violation::ActivityState(view.activity));
    }
    if state & !0x1F != 0 || state & blocking::SMI != 0 {
        return Err(Violation::InterruptibilityReserved(state));
    }
    if sti && mov_ss {
        return Err(Violation::StiAndMovSs);
    }
    if sti && !view.rflags_if {
        return Err(Violation::StiWithoutIf);
    }
    if (sti || mov_ss) && view.activity != 0 {
        return Err(Violation::BlockingWhileInactive);
    }
    if state & blocking::ENCLAVE != 0 && mov_ss {
        return Err(Violation::EnclaveWithMovSs);
    }
    if state & blocking::ENCLAVE != 0 && !config.sgx {
        return Err(Violation::EnclaveWithoutSgx);
    }
    if view.injection & (1 << 31) == 0 {
        return Ok(());
    }
    let kind = (view.injection >> 8) & 7;
    let vector = view.injection & 0xFF;
    let allowed_in_activity = match view.activity {
        0 => true,
        1 => matches!((kind, vector), (0 | 2, _) | (3, 1 | 18) | (7, 0)),
        2 => matches!((kind, vector), (2, _) | (3, 18)),
        _ => false,
    };
    if !allowed_in_activity {
        return Err(Violation::InjectionBlockedByActivity {
            activity: view.activity,
            info: view.injection,
        });
    }
    if kind == 0 && (!view.rflags_if || sti || mov_ss) {
        return Err(Violation::InterruptInjectedWhileBlocked);
    }
    if kind == 2 && (mov_ss || (sti && config.nmi_blocked_by_sti)) {
        return Err(Violation::NmiInjectedWhileBlocked);
    }
    if kind == 2 && view.pin & pin::VIRTUAL_NMIS != 0 && state & blocking::NMI != 0 {
        return Err(Violation::NmiInjectedWithVirtualNmiBlocking);
    }
    Ok(())
}

/// The checks on the VM-entry interruption-information field (26.2.1.3).
pub fn check_injection(config: &Config, view: &EntryView) -> Result<(), Violation> {
    let info = view.injection;
    if info & (1 << 31) == 0 {
        return Ok(());
    }
    let kind = (info >> 8) & 7;
    let vector = info & 0xFF;
    let deliver = info & (1 << 11) != 0;
    if kind == 1 || kind == 7 {
        return Err(Violation::ReservedType(kind));
    }
    if (kind == 2 && vector != 2) || (kind == 3 && vector > 31) {
        return Err(Violation::BadVector(info));
    }
    // Protected mode for this rule: CR0.PE = 1, or unrestricted guest off.
    let protected = view.cr0_pe || !config.unrestricted_guest;
    let must_deliver = kind == 3 && protected && pushes_error_code(vector as u8);
    let may_deliver = kind == 3 && protected;
    if (deliver && !may_deliver) || (!config.basic_56 && deliver != must_deliver) {
        return Err(Violation::ErrorCodeMismatch(info));
    }
    let nested_ok = config.fred && kind == 3;
    if info & 0x7FFF_D000 != 0 || (info & (1 << 13) != 0 && !nested_ok) {
        return Err(Violation::InjectionReserved(info));
    }
    if deliver && view.error_code >> 16 != 0 {
        return Err(Violation::ErrorCodeHigh(view.error_code));
    }
    if (4..=6).contains(&kind) {
        let ok = (1..=15).contains(&view.length) || (view.length == 0 && config.misc_30);
        if !ok {
            return Err(Violation::InstructionLength(view.length));
        }
    }
    Ok(())
}

/// Every VM-entry check of the model, in the order the processor makes them (controls first:
/// a failure there is VMfailValid; the guest-state ones are VM-entry failures).
pub fn check_entry(config: &Config, view: &EntryView) -> Result<(), Violation> {
    check_controls(config, view)?;
    check_injection(config, view)?;
    check_guest_state(config, view)
}

/// The exit a window control causes before the guest's first instruction, if any (SDM 25.2,
/// 26.7.5-26.7.6): NMI window (basic reason 8) when there is no virtual-NMI blocking and no
/// MOV-SS blocking (nor STI blocking on processors that block NMIs after STI); else interrupt
/// window (7) when RFLAGS.IF = 1 and there is no STI or MOV-SS blocking, whatever the NMI
/// blocking. Neither happens in the shutdown or wait-for-SIPI state.
pub fn window_exit(config: &Config, primary_controls: u32, guest: &Guest) -> Option<u32> {
    if matches!(guest.activity, Activity::Shutdown | Activity::WaitForSipi) {
        return None;
    }
    let nmi_window = primary_controls & primary::NMI_WINDOW != 0
        && config.virtual_nmis
        && !guest.nmi_blocked
        && !guest.mov_ss
        && !(config.nmi_blocked_by_sti && guest.sti);
    if nmi_window {
        return Some(8);
    }
    let interrupt_window = primary_controls & primary::INTERRUPT_WINDOW != 0
        && guest.interrupts_enabled
        && !guest.sti
        && !guest.mov_ss;
    interrupt_window.then_some(7)
}

/// Guest activity states (SDM 25.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Active.
    Active = 0,
    /// HLT.
    Hlt = 1,
    /// Shutdown.
    Shutdown = 2,
    /// Wait-for-SIPI.
    WaitForSipi = 3,
}

/// One handler frame on the guest's stack: what its return restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frame {
    /// RFLAGS.IF before delivery.
    pub interrupts_enabled: bool,
    /// The frame is an NMI's (FRED: the SS slot's NMI bit).
    pub nmi: bool,
}

/// More than the deliveries one fuzz input can cause (32 rounds of at most two, then the
/// drain), so no frame is ever dropped.
const MAX_FRAMES: usize = 128;

/// The guest's event-relevant state as the processor keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// Blocking by STI.
    pub sti: bool,
    /// Blocking by MOV SS.
    pub mov_ss: bool,
    /// Bit 3 of the interruptibility state: virtual-NMI blocking (virtual NMIs on) or
    /// blocking by NMI (off).
    pub nmi_blocked: bool,
    /// Activity state.
    pub activity: Activity,
    frames: [Frame; MAX_FRAMES],
    depth: usize,
}

impl Default for Guest {
    fn default() -> Self {
        Self {
            interrupts_enabled: false,
            sti: false,
            mov_ss: false,
            nmi_blocked: false,
            activity: Activity::Active,
            frames: [Frame::default(); MAX_FRAMES],
            depth: 0,
        }
    }
}

impl Guest {
    /// Handler frames on the stack.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// `true` when the innermost handler frame is an NMI's.
    pub fn innermost_is_nmi(&self) -> bool {
        self.depth
            .checked_sub(1)
            .and_then(|top| self.frames.get(top))
            .is_some_and(|frame| frame.nmi)
    }

    /// `true` while an NMI handler frame is on the stack.
    pub fn in_nmi_handler(&self) -> bool {
        self.frames.iter().take(self.depth).any(|frame| frame.nmi)
    }

    /// The interruptibility-state value the processor saves at a VM exit.
    pub fn interruptibility(&self) -> u32 {
        u32::from(self.sti) | u32::from(self.mov_ss) << 1 | u32::from(self.nmi_blocked) << 3
    }

    /// Loads the guest state VM entry loads from the VMCS (26.3.2, 26.7.1).
    pub fn load(&mut self, view: &EntryView) {
        self.interrupts_enabled = view.rflags_if;
        self.sti = view.interruptibility & blocking::STI != 0;
        self.mov_ss = view.interruptibility & blocking::MOV_SS != 0;
        self.nmi_blocked = view.interruptibility & blocking::NMI != 0;
        self.activity = match view.activity {
            1 => Activity::Hlt,
            2 => Activity::Shutdown,
            3 => Activity::WaitForSipi,
            _ => Activity::Active,
        };
    }

    /// Completed delivery of `event` through the IDT or FRED (interrupt gate): a frame is
    /// pushed, IF cleared, the processor leaves HLT; an NMI blocks further NMIs (virtual-NMI
    /// blocking with virtual NMIs on, 26.7.1.2; blocking by NMI otherwise).
    pub fn deliver(&mut self, event: &Event) {
        let nmi = event.kind == Kind::Nmi;
        if let Some(frame) = self.frames.get_mut(self.depth) {
            *frame = Frame { interrupts_enabled: self.interrupts_enabled, nmi };
            self.depth += 1;
        }
        self.interrupts_enabled = false;
        self.sti = false;
        self.mov_ss = false;
        self.activity = Activity::Active;
        if nmi {
            self.nmi_blocked = true;
        }
    }

    /// IRET (or ERETS) from the innermost handler. Returns `true` when it removed NMI blocking.
    /// With NMI exiting on, IRET removes virtual-NMI blocking (virtual NMIs on) and leaves real
    /// NMI blocking alone (off) (SDM 26.3 "IRET"); a FRED ERETS unblocks only when the frame
    /// has the NMI bit.
    pub fn iret(&mut self, config: &Config) -> bool {
        let Some(top) = self.depth.checked_sub(1) else { return false };
        let frame = self.frames.get(top).copied().unwrap_or_default();
        self.depth = top;
        self.interrupts_enabled = frame.interrupts_enabled;
        self.sti = false;
        self.mov_ss = false;
        let unblocks = config.virtual_nmis && (!config.fred || frame.nmi) && self.nmi_blocked;
        if unblocks {
            self.nmi_blocked = false;
        }
        unblocks
    }
}

/// Guest NMIs owed under the latching rule the model holds the library to: while one NMI is in
/// service (the guest is blocked by NMI, or an NMI injection is pending), at most one more is
/// held; with none in service, at most two (one delivered at once, one held) (SDM Vol. 3A
/// 6.7.1 NMI latching; KVM's process_nmi). The driver also clamps owed NMIs to one whenever
/// one comes into service.
pub fn owed_nmis_after_request(owed: u32, in_service: bool) -> u32 {
    let limit = if in_service { 1 } else { 2 };
    owed.saturating_add(1).min(limit)
}

/// Interrupt vectors owed (a set: a second request merges, as in the APIC's IRR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VectorSet([u64; 4]);

impl VectorSet {
    /// Adds `vector`.
    pub fn insert(&mut self, vector: u8) {
        if let Some(word) = self.0.get_mut(usize::from(vector >> 6)) {
            *word |= 1 << (vector & 63);
        }
    }

    /// Removes `vector`; `true` if it was there.
    pub fn remove(&mut self, vector: u8) -> bool {
        match self.0.get_mut(usize::from(vector >> 6)) {
            Some(word) => {
                let had = *word & (1 << (vector & 63)) != 0;
                *word &= !(1 << (vector & 63));
                had
            }
            None => false,
        }
    }

    /// How many vectors.
    pub fn len(&self) -> u32 {
        self.0.iter().map(|word| word.count_ones()).sum()
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            virtual_nmis: true,
            nmi_window_allowed: true,
            acknowledge_on_exit: true,
            protected_mode: true,
            ..Config::default()
        }
    }

    fn view() -> EntryView {
        EntryView {
            pin: pin::DEFAULT1 | pin::NMI_EXITING | pin::VIRTUAL_NMIS | 1,
            primary: primary::DEFAULT1,
            exit: exit_controls::DEFAULT1,
            rflags_if: true,
            cr0_pe: true,
            ..EntryView::default()
        }
    }

    #[test]
    fn nmi_window_requires_virtual_nmis_26_2_1_1() {
        let mut v = view();
        v.primary |= primary::NMI_WINDOW;
        assert_eq!(check_controls(&config(), &v), Ok(()));
        v.pin &= !pin::VIRTUAL_NMIS;
        assert_eq!(check_controls(&config(), &v), Err(Violation::NmiWindowWithoutVirtualNmis));
        let mut v = view();
        v.pin &= !pin::NMI_EXITING;
        assert_eq!(check_controls(&config(), &v), Err(Violation::VirtualNmisWithoutNmiExiting));
    }

    #[test]
    fn nmi_window_needs_its_allowed_1_bit() {
        let mut v = view();
        v.primary |= primary::NMI_WINDOW;
        let config = Config { nmi_window_allowed: false, ..config() };
        assert!(matches!(
            check_controls(&config, &v),
            Err(Violation::ControlNotAllowed { which: 1, .. })
        ));
        v.primary = primary::DEFAULT1 & !0x2;
        assert!(matches!(check_controls(&config, &v), Err(Violation::ControlNotAllowed { .. })));
    }

    #[test]
    fn nmi_injection_with_virtual_nmis_sets_virtual_nmi_blocking() {
        let mut guest = Guest { interrupts_enabled: true, ..Guest::default() };
        guest.deliver(&Event::nmi());
        assert!(guest.nmi_blocked);
        assert!(!guest.interrupts_enabled, "interrupt gate");
        assert!(guest.iret(&config()), "IRET removes virtual-NMI blocking");
        assert!(guest.interrupts_enabled, "IF restored from the frame");
        assert!(!guest.nmi_blocked);
    }

    #[test]
    fn iret_keeps_real_nmi_blocking_with_nmi_exiting() {
        let config = Config { virtual_nmis: false, ..config() };
        let mut guest = Guest::default();
        guest.deliver(&Event::nmi());
        assert!(!guest.iret(&config));
        assert!(guest.nmi_blocked);
    }

    #[test]
    fn fred_erets_unblocks_only_from_an_nmi_frame() {
        let config = Config { fred: true, ..config() };
        let mut guest = Guest::default();
        guest.deliver(&Event::nmi());
        guest.deliver(&Event::new(Kind::HardwareException, 6));
        assert!(!guest.iret(&config), "the #UD frame has no NMI bit");
        assert!(guest.nmi_blocked);
        assert!(guest.iret(&config));
    }

    #[test]
    fn nmi_injection_refused_under_virtual_nmi_blocking_and_mov_ss() {
        let mut v = view();
        v.injection = Event::nmi().info();
        assert_eq!(check_entry(&config(), &v), Ok(()));
        v.interruptibility = blocking::NMI;
        assert_eq!(check_entry(&config(), &v), Err(Violation::NmiInjectedWithVirtualNmiBlocking));
        // With virtual NMIs off, bit 3 does not forbid injection.
        v.pin &= !pin::VIRTUAL_NMIS;
        assert_eq!(check_entry(&config(), &v), Ok(()));
        v.interruptibility = blocking::MOV_SS;
        assert_eq!(check_entry(&config(), &v), Err(Violation::NmiInjectedWhileBlocked));
        v.interruptibility = blocking::STI;
        assert_eq!(check_entry(&config(), &v), Ok(()));
        let strict = Config { nmi_blocked_by_sti: true, ..config() };
        assert_eq!(check_entry(&strict, &v), Err(Violation::NmiInjectedWhileBlocked));
    }

    #[test]
    fn interrupt_injection_needs_if_and_no_sti_or_mov_ss_but_ignores_nmi_blocking() {
        let mut v = view();
        v.injection = Event::new(Kind::External, 0x40).info();
        v.interruptibility = blocking::NMI;
        assert_eq!(check_entry(&config(), &v), Ok(()));
        v.interruptibility = blocking::STI;
        assert_eq!(check_entry(&config(), &v), Err(Violation::InterruptInjectedWhileBlocked));
        v.interruptibility = 0;
        v.rflags_if = false;
        assert_eq!(check_entry(&config(), &v), Err(Violation::InterruptInjectedWhileBlocked));
    }

    #[test]
    fn guest_state_rules_26_3_1_5() {
        let mut v = view();
        v.interruptibility = blocking::STI | blocking::MOV_SS;
        assert_eq!(check_entry(&config(), &v), Err(Violation::StiAndMovSs));
        v.interruptibility = blocking::STI;
        v.rflags_if = false;
        assert_eq!(check_entry(&config(), &v), Err(Violation::StiWithoutIf));
        v.rflags_if = true;
        v.activity = 1;
        assert_eq!(check_entry(&config(), &v), Err(Violation::BlockingWhileInactive));
        v.interruptibility = blocking::MOV_SS;
        assert_eq!(check_entry(&config(), &v), Err(Violation::BlockingWhileInactive));
        v.activity = 0;
        let sgx = Config { sgx: true, ..config() };
        v.interruptibility = blocking::MOV_SS | blocking::ENCLAVE;
        assert_eq!(check_entry(&sgx, &v), Err(Violation::EnclaveWithMovSs));
        v.interruptibility = blocking::ENCLAVE;
        assert_eq!(check_entry(&sgx, &v), Ok(()));
        assert_eq!(check_entry(&config(), &v), Err(Violation::EnclaveWithoutSgx));
        v.interruptibility = blocking::SMI;
        assert!(matches!(check_entry(&sgx, &v), Err(Violation::InterruptibilityReserved(_))));
        v.interruptibility = 1 << 5;
        assert!(matches!(check_entry(&config(), &v), Err(Violation::InterruptibilityReserved(_))));
        v.interruptibility = 0;
        v.activity = 4;
        assert_eq!(check_entry(&config(), &v), Err(Violation::ActivityState(4)));
    }

    #[test]
    fn activity_states_allow_only_their_events() {
        let mut v = view();
        let cases = [
            (1, Event::new(Kind::External, 0x30), true),
            (1, Event::nmi(), true),
            (1, Event::new(Kind::HardwareException, 1), true),
            (1, Event::new(Kind::HardwareException, 18), true),
            (1, Event::new(Kind::HardwareException, 6), false),
            (2, Event::nmi(), true),
            (2, Event::new(Kind::External, 0x30), false),
            (3, Event::nmi(), false),
            (3, Event::new(Kind::External, 0x30), false),
        ];
        for (activity, event, allowed) in cases {
            v.activity = activity;
            v.injection = event.info();
            assert_eq!(check_entry(&config(), &v).is_ok(), allowed, "{activity} {event:?}");
        }
    }

    #[test]
    fn error_code_rules_depend_on_pe_unrestricted_guest_and_basic_56() {
        let mut v = view();
        let gp = Event { error_code: Some(0), ..Event::new(Kind::HardwareException, 13) };
        v.injection = gp.info();
        assert_eq!(check_entry(&config(), &v), Ok(()));
        v.injection = Event::new(Kind::HardwareException, 13).info();
        assert!(matches!(check_entry(&config(), &v), Err(Violation::ErrorCodeMismatch(_))));
        assert_eq!(check_entry(&Config { basic_56: true, ..config() }, &v), Ok(()));
        // Real mode under unrestricted guest: no error code, whatever the vector.
        let real = Config { unrestricted_guest: true, protected_mode: false, ..config() };
        v.cr0_pe = false;
        assert_eq!(check_entry(&real, &v), Ok(()));
        v.injection = gp.info();
        assert!(matches!(check_entry(&real, &v), Err(Violation::ErrorCodeMismatch(_))));
        v.cr0_pe = true;
        v.error_code = 0x1_0000;
        assert_eq!(check_entry(&config(), &v), Err(Violation::ErrorCodeHigh(0x1_0000)));
        v.error_code = 0xFFFF;
        assert_eq!(check_entry(&config(), &v), Ok(()));
    }

    #[test]
    fn software_event_length_and_misc_30() {
        let mut v = view();
        v.injection = Event::new(Kind::SoftwareInterrupt, 0x80).info();
        v.length = 0;
        assert_eq!(check_entry(&config(), &v), Err(Violation::InstructionLength(0)));
        assert_eq!(check_entry(&Config { misc_30: true, ..config() }, &v), Ok(()));
        v.length = 16;
        assert_eq!(check_entry(&config(), &v), Err(Violation::InstructionLength(16)));
        v.length = 15;
        assert_eq!(check_entry(&config(), &v), Ok(()));
    }

    #[test]
    fn nested_bit_only_for_fred_hardware_exceptions() {
        let mut v = view();
        let nested = Event { nested: true, ..Event::new(Kind::HardwareException, 6) };
        v.injection = nested.info();
        assert!(matches!(check_entry(&config(), &v), Err(Violation::InjectionReserved(_))));
        assert_eq!(check_entry(&Config { fred: true, ..config() }, &v), Ok(()));
        v.injection = Event { nested: true, ..Event::nmi() }.info();
        assert!(matches!(
            check_entry(&Config { fred: true, ..config() }, &v),
            Err(Violation::InjectionReserved(_))
        ));
        v.injection = Event::nmi().info() | (1 << 12);
        assert!(matches!(check_entry(&config(), &v), Err(Violation::InjectionReserved(_))));
    }

    #[test]
    fn vectors_and_reserved_types() {
        let mut v = view();
        v.injection = Event::new(Kind::Nmi, 3).info();
        assert!(matches!(check_entry(&config(), &v), Err(Violation::BadVector(_))));
        v.injection = Event::new(Kind::HardwareException, 32).info();
        assert!(matches!(check_entry(&config(), &v), Err(Violation::BadVector(_))));
        v.injection = (1 << 31) | (1 << 8) | 0x20;
        assert_eq!(check_entry(&config(), &v), Err(Violation::ReservedType(1)));
        v.injection = (1 << 31) | (7 << 8);
        assert_eq!(check_entry(&config(), &v), Err(Violation::ReservedType(7)));
    }

    #[test]
    fn interrupt_window_opens_with_if_and_no_sti_or_mov_ss_whatever_the_nmi_blocking() {
        let both = primary::INTERRUPT_WINDOW | primary::NMI_WINDOW;
        let mut guest = Guest { interrupts_enabled: true, nmi_blocked: true, ..Guest::default() };
        assert_eq!(window_exit(&config(), both, &guest), Some(7));
        assert_eq!(window_exit(&config(), primary::NMI_WINDOW, &guest), None);
        guest.sti = true;
        assert_eq!(window_exit(&config(), both, &guest), None);
        guest.sti = false;
        guest.interrupts_enabled = false;
        assert_eq!(window_exit(&config(), both, &guest), None);
        guest.nmi_blocked = false;
        assert_eq!(window_exit(&config(), both, &guest), Some(8), "NMI window first");
        guest.mov_ss = true;
        assert_eq!(window_exit(&config(), both, &guest), None);
        guest.mov_ss = false;
        guest.activity = Activity::Hlt;
        assert_eq!(window_exit(&config(), both, &guest), Some(8), "wakes HLT");
        guest.activity = Activity::WaitForSipi;
        assert_eq!(window_exit(&config(), both, &guest), None);
        guest.activity = Activity::Active;
        guest.sti = true;
        guest.interrupts_enabled = true;
        assert_eq!(window_exit(&config(), primary::NMI_WINDOW, &guest), Some(8));
        let strict = Config { nmi_blocked_by_sti: true, ..config() };
        assert_eq!(window_exit(&strict, primary::NMI_WINDOW, &guest), None);
    }

    #[test]
    fn nmi_latching_keeps_one_beside_one_in_service() {
        assert_eq!(owed_nmis_after_request(0, true), 1);
        assert_eq!(owed_nmis_after_request(1, true), 1);
        assert_eq!(owed_nmis_after_request(1, false), 2);
        assert_eq!(owed_nmis_after_request(2, false), 2);
    }

    #[test]
    fn vector_set_merges() {
        let mut set = VectorSet::default();
        set.insert(0xFF);
        set.insert(0xFF);
        assert!(set.remove(0xFF));
        assert!(!set.remove(0xFF));
        assert!(set.is_empty());
    }
}
