//! VM exits: the per-exit token, exit reasons, the exit-information snapshot and the
//! exit-qualification decoders.

/// Proof that a VM exit has just happened on this logical processor and that the current
/// VMCS's exit-information fields describe it.
///
/// A `VmExit` is produced by each VM exit (by [`ActiveVmcs`](crate::vmcs::ActiveVmcs)'s guest
/// runner, by [`SoftVmcs`](crate::vmcs::SoftVmcs) when a test simulates an exit, or by
/// [`VmExit::assume_new`] in a hypervisor with its own entry code) and is consumed by the next VM
/// entry. Exit-information snapshots borrow it, so a snapshot of one exit cannot outlive the
/// entry that ends that exit: reading stale exit information is a compile error, not a bug.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a VmExit is needed to read this exit's information and to enter the guest again"]
pub struct VmExit {
    _private: (),
}

impl VmExit {
    /// Makes the token inside this crate (guest runner and software VMCS).
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }

    /// Makes the token in a hypervisor that performs VM entry and exit with its own code.
    ///
    /// # Safety
    ///
    /// The caller must be in VMX root operation, a VM exit must have just returned control to
    /// it with the VMCS that it will read still current, and no other `VmExit` for this logical
    /// processor may be alive: the exit-information fields must describe the most recent exit.
    pub const unsafe fn assume_new() -> Self {
        Self::new()
    }
}

use crate::error::VmFail;
use crate::event::InterruptionInfo;
use crate::field;
use crate::vmcs::VmcsAccess;
use core::fmt;
use core::marker::PhantomData;

pub mod qualification;
pub use qualification::*;

macro_rules! basic_exit_reasons {
    ($( $(#[$doc:meta])* $name:ident = $number:literal, )*) => {
        /// A basic exit reason (bits 15:0 of the exit-reason field; SDM Vol. 3D Appendix C).
        /// Numbers the SDM does not define are kept in [`BasicExitReason::Unknown`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[non_exhaustive]
        pub enum BasicExitReason {
            $( $(#[$doc])* $name, )*
            /// A number this crate does not know (kept).
            Unknown(u16),
        }

        impl BasicExitReason {
            /// Every named reason, in number order.
            pub const ALL: &'static [Self] = &[$( Self::$name, )*];

            /// Decodes a basic exit reason.
            #[inline]
            pub const fn from_number(number: u16) -> Self {
                match number {
                    $( $number => Self::$name, )*
                    other => Self::Unknown(other),
                }
            }

            /// The number.
            #[inline]
            pub const fn number(self) -> u16 {
                match self {
                    $( Self::$name => $number, )*
                    Self::Unknown(other) => other,
                }
            }
        }
    };
}

basic_exit_reasons! {
    /// 0: exception or non-maskable interrupt.
    ExceptionOrNmi = 0,
    /// 1: external interrupt.
    ExternalInterrupt = 1,
    /// 2: triple fault.
    TripleFault = 2,
    /// 3: INIT signal.
    InitSignal = 3,
    /// 4: start-up IPI.
    StartupIpi = 4,
    /// 5: I/O system-management interrupt.
    IoSmi = 5,
    /// 6: other SMI.
    OtherSmi = 6,
    /// 7: interrupt window.
    InterruptWindow = 7,
    /// 8: NMI window.
    NmiWindow = 8,
    /// 9: task switch.
    TaskSwitch = 9,
    /// 10: CPUID.
    Cpuid = 10,
    /// 11: GETSEC.
    Getsec = 11,
    /// 12: HLT.
    Hlt = 12,
    /// 13: INVD.
    Invd = 13,
    /// 14: INVLPG.
    Invlpg = 14,
    /// 15: RDPMC.
    Rdpmc = 15,
    /// 16: RDTSC.
    Rdtsc = 16,
    /// 17: RSM.
    Rsm = 17,
    /// 18: VMCALL.
    Vmcall = 18,
    /// 19: VMCLEAR.
    Vmclear = 19,
    /// 20: VMLAUNCH.
    Vmlaunch = 20,
    /// 21: VMPTRLD.
    Vmptrld = 21,
    /// 22: VMPTRST.
    Vmptrst = 22,
    /// 23: VMREAD.
    Vmread = 23,
    /// 24: VMRESUME.
    Vmresume = 24,
    /// 25: VMWRITE.
    Vmwrite = 25,
    /// 26: VMXOFF.
    Vmxoff = 26,
    /// 27: VMXON.
    Vmxon = 27,
    /// 28: control-register access.
    ControlRegisterAccess = 28,
    /// 29: MOV DR.
    MovDr = 29,
    /// 30: I/O instruction.
    IoInstruction = 30,
    /// 31: RDMSR.
    Rdmsr = 31,
    /// 32: WRMSR.
    Wrmsr = 32,
    /// 33: VM-entry failure due to invalid guest state.
    EntryFailureInvalidGuestState = 33,
    /// 34: VM-entry failure due to MSR loading.
    EntryFailureMsrLoading = 34,
    /// 36: MWAIT.
    Mwait = 36,
    /// 37: monitor trap flag.
    MonitorTrapFlag = 37,
    /// 39: MONITOR.
    Monitor = 39,
    /// 40: PAUSE.
    Pause = 40,
    /// 41: VM-entry failure due to machine-check event.
    EntryFailureMachineCheck = 41,
    /// 43: TPR below threshold.
    TprBelowThreshold = 43,
    /// 44: APIC access.
    ApicAccess = 44,
    /// 45: virtualized EOI.
    VirtualizedEoi = 45,
    /// 46: access to GDTR or IDTR.
    GdtrIdtrAccess = 46,
    /// 47: access to LDTR or TR.
    LdtrTrAccess = 47,
    /// 48: EPT violation.
    EptViolation = 48,
    /// 49: EPT misconfiguration.
    EptMisconfiguration = 49,
    /// 50: INVEPT.
    Invept = 50,
    /// 51: RDTSCP.
    Rdtscp = 51,
    /// 52: VMX-preemption timer expired.
    PreemptionTimerExpired = 52,
    /// 53: INVVPID.
    Invvpid = 53,
    /// 54: WBINVD or WBNOINVD.
    Wbinvd = 54,
    /// 55: XSETBV.
    Xsetbv = 55,
    /// 56: APIC write.
    ApicWrite = 56,
    /// 57: RDRAND.
    Rdrand = 57,
    /// 58: INVPCID.
    Invpcid = 58,
    /// 59: VMFUNC.
    Vmfunc = 59,
    /// 60: ENCLS.
    Encls = 60,
    /// 61: RDSEED.
    Rdseed = 61,
    /// 62: page-modification log full.
    PageModificationLogFull = 62,
    /// 63: XSAVES.
    Xsaves = 63,
    /// 64: XRSTORS.
    Xrstors = 64,
    /// 65: PCONFIG.
    Pconfig = 65,
    /// 66: SPP-related event.
    SppRelatedEvent = 66,
    /// 67: UMWAIT.
    Umwait = 67,
    /// 68: TPAUSE.
    Tpause = 68,
    /// 69: LOADIWKEY.
    Loadiwkey = 69,
    /// 70: ENCLV.
    Enclv = 70,
    /// 71: SGX conflict.
    SgxConflict = 71,
    /// 72: ENQCMD PASID translation failure.
    EnqcmdPasidTranslationFailure = 72,
    /// 73: ENQCMDS PASID translation failure.
    EnqcmdsPasidTranslationFailure = 73,
    /// 74: bus lock.
    BusLock = 74,
    /// 75: NOTIFY (notify window / instruction timeout).
    Notify = 75,
    /// 76: SEAMCALL.
    Seamcall = 76,
    /// 77: TDCALL.
    Tdcall = 77,
    /// 78: RDMSRLIST.
    Rdmsrlist = 78,
    /// 79: WRMSRLIST.
    Wrmsrlist = 79,
    /// 80: URDMSR (user-mode MSR read; the exit qualification holds the MSR index and the
    /// instruction information bits 6:3 the destination register).
    Urdmsr = 80,
    /// 81: UWRMSR (user-mode MSR write; the exit qualification holds the MSR index and the
    /// instruction information bits 6:3 the source register).
    Uwrmsr = 81,
    /// 84: RDMSR with immediate operand.
    RdmsrImmediate = 84,
    /// 85: WRMSRNS with immediate operand.
    WrmsrnsImmediate = 85,
}

/// The exit-reason field (0x4402): basic reason in bits 15:0 plus flags. Any value decodes.
///
/// ```
/// use hvkit_vmx_core::exit::{BasicExitReason, ExitReason};
///
/// // A VM entry that failed on guest state: bit 31 set, basic reason 33.
/// let reason = ExitReason::from_raw(0x8000_0021);
/// assert!(reason.is_entry_failure());
/// assert_eq!(reason.basic(), BasicExitReason::EntryFailureInvalidGuestState);
/// // Numbers the crate does not know are kept, never a panic.
/// assert_eq!(ExitReason::from_raw(0x1234).basic(), BasicExitReason::Unknown(0x1234));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct ExitReason(u32);

impl ExitReason {
    /// Bit 26: a pending bus-lock VM exit was preempted by this one... (bus-lock detection).
    pub const BUS_LOCK_PREEMPTED: u32 = 1 << 26;
    /// Bit 27: the exit happened from enclave mode.
    pub const ENCLAVE_MODE: u32 = 1 << 27;
    /// Bit 28: a pending MTF VM exit.
    pub const PENDING_MTF: u32 = 1 << 28;
    /// Bit 29: exit from VMX root operation (SMM VM exit).
    pub const FROM_VMX_ROOT: u32 = 1 << 29;
    /// Bit 31: VM-entry failure.
    pub const ENTRY_FAILURE: u32 = 1 << 31;

    /// Wraps the raw field.
    #[inline]
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// The raw field.
    #[inline]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Bits 15:0, the basic exit reason's number (cheaper to compare than
    /// [`ExitReason::basic`] on a hot path: `reason.basic_number() ==
    /// BasicExitReason::Cpuid.number()` compiles to one compare).
    #[inline]
    pub const fn basic_number(self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }

    /// Bits 15:0, decoded.
    #[inline]
    pub const fn basic(self) -> BasicExitReason {
        BasicExitReason::from_number((self.0 & 0xFFFF) as u16)
    }

    /// Bit 31: the VM entry failed (reasons 33, 34, 41); the guest never ran.
    #[inline]
    pub const fn is_entry_failure(self) -> bool {
        self.0 & Self::ENTRY_FAILURE != 0
    }

    /// Bit 26.
    pub const fn bus_lock_preempted(self) -> bool {
        self.0 & Self::BUS_LOCK_PREEMPTED != 0
    }

    /// Bit 27.
    pub const fn enclave_mode(self) -> bool {
        self.0 & Self::ENCLAVE_MODE != 0
    }

    /// Bit 28.
    pub const fn pending_mtf(self) -> bool {
        self.0 & Self::PENDING_MTF != 0
    }

    /// Bit 29.
    pub const fn from_vmx_root(self) -> bool {
        self.0 & Self::FROM_VMX_ROOT != 0
    }
}

impl fmt::Debug for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExitReason({:#x}: {:?}", self.0, self.basic())?;
        if self.is_entry_failure() {
            f.write_str(", entry failure")?;
        }
        f.write_str(")")
    }
}

/// Which optional exit-information fields the processor has (so a snapshot never reads a field
/// that would fail with VM-instruction error 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExitInfoOptions {
    /// Read ORIGINAL_EVENT_DATA (FRED / nested-exception support: IA32_VMX_BASIC\[58\]).
    pub original_event_data: bool,
}

/// The first phase of reading an exit: what host-event re-delivery needs (the exit reason and
/// the VM-exit interruption information), read with two VMREADs right after the exit.
///
/// Complete it into the full snapshot with [`ExitHead::complete`] once the host event is
/// re-delivered; [`ExitInfo::read`] does both phases at once. Borrows the exit's [`VmExit`]
/// token like [`ExitInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitHead<'exit> {
    /// Exit reason (0x4402).
    pub reason: ExitReason,
    /// VM-exit interruption information (0x4404).
    pub interruption_info: InterruptionInfo,
    _exit: PhantomData<&'exit VmExit>,
}

impl<'exit> ExitHead<'exit> {
    /// Reads the exit reason and the VM-exit interruption information of the exit `exit`.
    #[inline]
    pub fn read(vmcs: &impl VmcsAccess, _exit: &'exit VmExit) -> Result<Self, VmFail> {
        let (reason, interruption_info) = vmcs.read_raw_pair(
            field::EXIT_REASON.encoding(),
            field::VM_EXIT_INTERRUPTION_INFO.encoding(),
        )?;
        #[allow(clippy::cast_possible_truncation, reason = "both fields are 32 bits wide")]
        let (reason, interruption_info) = (reason as u32, interruption_info as u32);
        Ok(Self {
            reason: ExitReason(reason),
            interruption_info: InterruptionInfo::from_raw(interruption_info),
            _exit: PhantomData,
        })
    }

    /// Builds the first phase from values, for tests and fuzzers that have no VMCS.
    pub fn from_parts(_exit: &'exit VmExit, reason: u32, interruption_info: u32) -> Self {
        Self {
            reason: ExitReason(reason),
            interruption_info: InterruptionInfo::from_raw(interruption_info),
            _exit: PhantomData,
        }
    }

    /// The second phase: reads the remaining exit-information fields and returns the full
    /// snapshot (the same as [`ExitInfo::read`] would have returned). Always inlined: it runs
    /// once per exit, and a call would copy the whole snapshot out.
    #[inline(always)]
    pub fn complete(
        self,
        vmcs: &impl VmcsAccess,
        options: ExitInfoOptions,
    ) -> Result<ExitInfo<'exit>, VmFail> {
        let reason = self.reason;
        // Tested by number (a bit mask), not through the decoded enum: no table lookup.
        let number = reason.basic_number();
        let guest_linear_address = if reports_guest_linear_address(number) {
            Some(vmcs.read(field::GUEST_LINEAR_ADDRESS)?)
        } else {
            None
        };
        const EPT_VIOLATION: u16 = BasicExitReason::EptViolation.number();
        const EPT_MISCONFIGURATION: u16 = BasicExitReason::EptMisconfiguration.number();
        let guest_physical_address = if matches!(number, EPT_VIOLATION | EPT_MISCONFIGURATION) {
            Some(vmcs.read(field::GUEST_PHYSICAL_ADDRESS)?)
        } else {
            None
        };
        let original_event_data = if options.original_event_data {
            Some(vmcs.read(field::ORIGINAL_EVENT_DATA)?)
        } else {
            None
        };
        // The six fields every exit has, as three VMREAD pairs (one status check per pair).
        let (qualification, interruption_error_code) = vmcs.read_raw_pair(
            field::EXIT_QUALIFICATION.encoding(),
            field::VM_EXIT_INTERRUPTION_ERROR_CODE.encoding(),
        )?;
        let (idt_vectoring_info, idt_vectoring_error_code) = vmcs.read_raw_pair(
            field::IDT_VECTORING_INFO.encoding(),
            field::IDT_VECTORING_ERROR_CODE.encoding(),
        )?;
        let (instruction_length, instruction_info) = vmcs.read_raw_pair(
            field::VM_EXIT_INSTRUCTION_LENGTH.encoding(),
            field::VM_EXIT_INSTRUCTION_INFO.encoding(),
        )?;
        let narrow = |value: u64| -> u32 {
            #[allow(clippy::cast_possible_truncation, reason = "32-bit exit-information fields")]
            let value = value as u32;
            value
        };
        Ok(ExitInfo {
            reason,
            qualification,
            interruption_info: self.interruption_info,
            interruption_error_code: narrow(interruption_error_code),
            idt_vectoring_info: InterruptionInfo::from_raw(narrow(idt_vectoring_info)),
            idt_vectoring_error_code: narrow(idt_vectoring_error_code),
            instruction_length: narrow(instruction_length),
            instruction_info: narrow(instruction_info),
            guest_linear_address,
            guest_physical_address,
            original_event_data,
            _exit: PhantomData,
        })
    }
}

impl<'exit> From<&ExitInfo<'exit>> for ExitHead<'exit> {
    #[inline]
    fn from(info: &ExitInfo<'exit>) -> Self {
        info.head()
    }
}

/// Everything the exit-information fields say about one VM exit, read once.
///
/// Borrows the exit's [`VmExit`] token, so it cannot outlive the next VM entry (which consumes
/// the token): a snapshot of one exit is never mistaken for the next.
///
/// ```
/// use hvkit_vmx_core::exit::{BasicExitReason, ExitInfo, ExitInfoParts, ExitQualification};
/// use hvkit_vmx_core::vmcs::SoftVmcs;
///
/// // On hardware: `ExitInfo::read(&active_vmcs, &exit, options)?` right after `run`. Here a
/// // software VMCS supplies the exit token and the values come from parts.
/// let mut vmcs = SoftVmcs::new();
/// let exit = vmcs.complete_exit();
/// let info = ExitInfo::from_parts(&exit, ExitInfoParts {
///     reason: 48,              // EPT violation
///     qualification: 0x182,    // write (bit 1), linear address valid and translated (7, 8)
///     guest_physical_address: Some(0xFEE0_0000),
///     ..ExitInfoParts::default()
/// });
/// assert_eq!(info.reason.basic(), BasicExitReason::EptViolation);
/// let ExitQualification::EptViolation(ept) = info.decoded_qualification() else {
///     unreachable!("reason 48 decodes as an EPT violation")
/// };
/// assert!(ept.write() && !ept.read() && ept.translated_access());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ExitInfo<'exit> {
    /// Exit reason (0x4402).
    pub reason: ExitReason,
    /// Exit qualification (0x6400), raw.
    pub qualification: u64,
    /// VM-exit interruption information (0x4404).
    pub interruption_info: InterruptionInfo,
    /// VM-exit interruption error code (0x4406); meaningful when the info has bit 11.
    pub interruption_error_code: u32,
    /// IDT-vectoring information (0x4408).
    pub idt_vectoring_info: InterruptionInfo,
    /// IDT-vectoring error code (0x440A); meaningful when the info has bit 11.
    pub idt_vectoring_error_code: u32,
    /// VM-exit instruction length (0x440C).
    pub instruction_length: u32,
    /// VM-exit instruction information (0x440E).
    pub instruction_info: u32,
    /// Guest-linear address (0x640A), for the exits that report one, else `None`.
    pub guest_linear_address: Option<u64>,
    /// Guest-physical address (0x2400), for EPT violations and misconfigurations, else `None`.
    pub guest_physical_address: Option<u64>,
    /// Original event data (0x2404), when requested in [`ExitInfoOptions`].
    pub original_event_data: Option<u64>,
    _exit: PhantomData<&'exit VmExit>,
}

impl<'exit> ExitInfo<'exit> {
    /// Reads the snapshot of the exit `exit` from `vmcs`: both phases ([`ExitHead::read`],
    /// then [`ExitHead::complete`]) at once.
    pub fn read(
        vmcs: &impl VmcsAccess,
        exit: &'exit VmExit,
        options: ExitInfoOptions,
    ) -> Result<Self, VmFail> {
        ExitHead::read(vmcs, exit)?.complete(vmcs, options)
    }

    /// The first-phase part of this snapshot (reason and interruption information).
    #[inline]
    pub fn head(&self) -> ExitHead<'exit> {
        ExitHead {
            reason: self.reason,
            interruption_info: self.interruption_info,
            _exit: PhantomData,
        }
    }

    /// Builds a snapshot from values, for tests and fuzzers that have no VMCS.
    pub fn from_parts(_exit: &'exit VmExit, parts: ExitInfoParts) -> Self {
        Self {
            reason: ExitReason(parts.reason),
            qualification: parts.qualification,
            interruption_info: InterruptionInfo::from_raw(parts.interruption_info),
            interruption_error_code: parts.interruption_error_code,
            idt_vectoring_info: InterruptionInfo::from_raw(parts.idt_vectoring_info),
            idt_vectoring_error_code: parts.idt_vectoring_error_code,
            instruction_length: parts.instruction_length,
            instruction_info: parts.instruction_info,
            guest_linear_address: parts.guest_linear_address,
            guest_physical_address: parts.guest_physical_address,
            original_event_data: parts.original_event_data,
            _exit: PhantomData,
        }
    }

    /// The exit qualification decoded for this exit's basic reason.
    pub fn decoded_qualification(&self) -> ExitQualification {
        ExitQualification::decode(self.reason.basic(), self.qualification)
    }
}

/// `defmt::Format` without the borrow of the exit token (which carries no data).
#[cfg(feature = "defmt")]
impl defmt::Format for VmExit {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "VmExit");
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for ExitHead<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "ExitHead {{ reason: {}, interruption_info: {} }}",
            self.reason,
            self.interruption_info
        );
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for ExitInfo<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "ExitInfo {{ reason: {}, qualification: {=u64:#x}, interruption_info: {}, \
             interruption_error_code: {=u32:#x}, idt_vectoring_info: {}, \
             idt_vectoring_error_code: {=u32:#x}, instruction_length: {=u32}, \
             instruction_info: {=u32:#x}, guest_linear_address: {}, \
             guest_physical_address: {}, original_event_data: {} }}",
            self.reason,
            self.qualification,
            self.interruption_info,
            self.interruption_error_code,
            self.idt_vectoring_info,
            self.idt_vectoring_error_code,
            self.instruction_length,
            self.instruction_info,
            self.guest_linear_address,
            self.guest_physical_address,
            self.original_event_data
        );
    }
}

/// Raw values for [`ExitInfo::from_parts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs, reason = "each field mirrors the ExitInfo field of the same name")]
pub struct ExitInfoParts {
    pub reason: u32,
    pub qualification: u64,
    pub interruption_info: u32,
    pub interruption_error_code: u32,
    pub idt_vectoring_info: u32,
    pub idt_vectoring_error_code: u32,
    pub instruction_length: u32,
    pub instruction_info: u32,
    pub guest_linear_address: Option<u64>,
    pub guest_physical_address: Option<u64>,
    pub original_event_data: Option<u64>,
}

impl fmt::Debug for ExitInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExitInfo")
            .field("reason", &self.reason)
            .field("qualification", &format_args!("{:#x}", self.qualification))
            .field("interruption_info", &self.interruption_info)
            .field("idt_vectoring_info", &self.idt_vectoring_info)
            .field("instruction_length", &self.instruction_length)
            .finish_non_exhaustive()
    }
}

/// The exits for which the SDM defines the guest-linear-address field (SDM "Exit
/// Qualification for ..." / "Guest Linear Address").
const GUEST_LINEAR_ADDRESS_REASONS: &[BasicExitReason] = &[
    BasicExitReason::ControlRegisterAccess,
    BasicExitReason::IoInstruction,
    BasicExitReason::GdtrIdtrAccess,
    BasicExitReason::LdtrTrAccess,
    BasicExitReason::EptViolation,
    BasicExitReason::Invept,
    BasicExitReason::Invvpid,
    BasicExitReason::Invpcid,
    BasicExitReason::Vmclear,
    BasicExitReason::Vmptrld,
    BasicExitReason::Vmptrst,
    BasicExitReason::Vmread,
    BasicExitReason::Vmwrite,
    BasicExitReason::Vmxon,
    BasicExitReason::Xsaves,
    BasicExitReason::Xrstors,
    BasicExitReason::Encls,
    BasicExitReason::Enclv,
    BasicExitReason::Loadiwkey,
    BasicExitReason::Pconfig,
];

/// The lowest basic-reason number in [`GUEST_LINEAR_ADDRESS_REASONS`].
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const GUEST_LINEAR_ADDRESS_LOWEST: u16 = {
    let mut lowest = u16::MAX;
    let mut index = 0;
    while index < GUEST_LINEAR_ADDRESS_REASONS.len() {
        let number = GUEST_LINEAR_ADDRESS_REASONS[index].number();
        if number < lowest {
            lowest = number;
        }
        index += 1;
    }
    lowest
};

/// [`GUEST_LINEAR_ADDRESS_REASONS`] as a bit mask over basic-reason numbers, bit 0 standing
/// for [`GUEST_LINEAR_ADDRESS_LOWEST`] (the reasons span fewer than 64 numbers: one
/// subtraction, one compare and one bit test).
#[allow(
    clippy::indexing_slicing,
    reason = "const evaluation: an out-of-range index fails the build"
)]
const GUEST_LINEAR_ADDRESS_MASK: u64 = {
    let mut mask = 0u64;
    let mut index = 0;
    while index < GUEST_LINEAR_ADDRESS_REASONS.len() {
        let offset = GUEST_LINEAR_ADDRESS_REASONS[index].number() - GUEST_LINEAR_ADDRESS_LOWEST;
        assert!(offset < 64, "guest-linear-address reasons span more than 64 numbers");
        mask |= 1 << offset;
        index += 1;
    }
    mask
};

/// Whether the exit with basic reason `number` reports a guest-linear address.
#[inline]
const fn reports_guest_linear_address(number: u16) -> bool {
    let offset = number.wrapping_sub(GUEST_LINEAR_ADDRESS_LOWEST);
    offset < 64 && GUEST_LINEAR_ADDRESS_MASK & (1 << offset) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_the_reason_and_the_fields() {
        use std::format;
        let failure = ExitReason::from_raw(0x8000_0021);
        let text = format!("{failure:?}");
        assert!(text.starts_with("ExitReason(0x80000021: "), "{text}");
        assert!(text.ends_with(", entry failure)"), "{text}");
        let cpuid = format!("{:?}", ExitReason::from_raw(10));
        assert_eq!(cpuid, "ExitReason(0xa: Cpuid)");
        let exit = crate::vmcs::SoftVmcs::new().complete_exit();
        let info = ExitInfo::from_parts(
            &exit,
            ExitInfoParts {
                reason: 48,
                qualification: 0x1_0182,
                interruption_info: 0,
                instruction_length: 3,
                ..ExitInfoParts::default()
            },
        );
        let text = format!("{info:?}");
        assert!(text.starts_with("ExitInfo { reason: ExitReason(0x30: EptViolation)"), "{text}");
        assert!(text.contains("qualification: 0x10182"), "{text}");
        assert!(text.contains("instruction_length: 3"), "{text}");
        assert!(text.ends_with(".. }"), "{text}");
    }
    use crate::vmcs::SoftVmcs;

    #[test]
    fn every_facts_number_is_named_and_gaps_stay_unknown() {
        let named: std::vec::Vec<u16> = BasicExitReason::ALL.iter().map(|r| r.number()).collect();
        let mut expected: std::vec::Vec<u16> = (0..=81).collect();
        expected.retain(|n| ![35, 38, 42].contains(n));
        expected.extend([84, 85]);
        assert_eq!(named, expected);
        for gap in [35, 38, 42, 82, 83, 86, 0xFFFF] {
            assert_eq!(BasicExitReason::from_number(gap), BasicExitReason::Unknown(gap));
            assert_eq!(BasicExitReason::from_number(gap).number(), gap);
        }
        assert_eq!(BasicExitReason::from_number(0), BasicExitReason::ExceptionOrNmi);
        assert_eq!(BasicExitReason::from_number(18), BasicExitReason::Vmcall);
        assert_eq!(BasicExitReason::from_number(48), BasicExitReason::EptViolation);
        assert_eq!(BasicExitReason::from_number(75), BasicExitReason::Notify);
        assert_eq!(BasicExitReason::from_number(85), BasicExitReason::WrmsrnsImmediate);
        // USER_MSR: 80 and 81 (the numbers Bochs and Xen use).
        assert_eq!(BasicExitReason::from_number(79), BasicExitReason::Wrmsrlist);
        assert_eq!(BasicExitReason::from_number(80), BasicExitReason::Urdmsr);
        assert_eq!(BasicExitReason::from_number(81), BasicExitReason::Uwrmsr);
        assert_eq!(BasicExitReason::Urdmsr.number(), 80);
        assert_eq!(BasicExitReason::Uwrmsr.number(), 81);
    }

    #[test]
    fn guest_linear_address_mask_matches_the_reason_list_for_every_number() {
        for number in 0..=u16::MAX {
            let listed =
                GUEST_LINEAR_ADDRESS_REASONS.contains(&BasicExitReason::from_number(number));
            assert_eq!(reports_guest_linear_address(number), listed, "reason {number}");
        }
        assert!(reports_guest_linear_address(BasicExitReason::EptViolation.number()));
        assert!(!reports_guest_linear_address(BasicExitReason::Cpuid.number()));
        assert!(!reports_guest_linear_address(BasicExitReason::EptMisconfiguration.number()));
    }

    #[test]
    fn exit_reason_flags() {
        // Recorded from Bochs 2.7 corei7_skylake_x: a bad VMCS link pointer -> 0x80000021.
        let reason = ExitReason::from_raw(0x8000_0021);
        assert!(reason.is_entry_failure());
        assert_eq!(reason.basic(), BasicExitReason::EntryFailureInvalidGuestState);
        assert_eq!(reason.basic_number(), 0x21, "flags are not part of the number");
        assert_eq!(ExitReason::from_raw(0xFFFF_FFFF).basic_number(), 0xFFFF);
        for (bit, getter) in [
            (26, ExitReason::bus_lock_preempted as fn(ExitReason) -> bool),
            (27, ExitReason::enclave_mode),
            (28, ExitReason::pending_mtf),
            (29, ExitReason::from_vmx_root),
            (31, ExitReason::is_entry_failure),
        ] {
            for other in 0..32 {
                assert_eq!(getter(ExitReason::from_raw(1 << other)), other == bit);
            }
        }
    }

    #[test]
    fn snapshot_reads_each_field_and_only_defined_optional_ones() {
        let mut vmcs = SoftVmcs::with_supported(|info| info.name != "ORIGINAL_EVENT_DATA");
        vmcs.set_exit_information(field::EXIT_REASON, 48).unwrap();
        vmcs.set_exit_information(field::EXIT_QUALIFICATION, 0x1082).unwrap();
        vmcs.set_exit_information(field::VM_EXIT_INTERRUPTION_INFO, 0x8000_0202).unwrap();
        vmcs.set_exit_information(field::VM_EXIT_INTERRUPTION_ERROR_CODE, 5).unwrap();
        vmcs.set_exit_information(field::IDT_VECTORING_INFO, 0x8000_0B0E).unwrap();
        vmcs.set_exit_information(field::IDT_VECTORING_ERROR_CODE, 6).unwrap();
        vmcs.set_exit_information(field::VM_EXIT_INSTRUCTION_LENGTH, 3).unwrap();
        vmcs.set_exit_information(field::VM_EXIT_INSTRUCTION_INFO, 9).unwrap();
        vmcs.set_exit_information(field::GUEST_LINEAR_ADDRESS, 0xAA).unwrap();
        vmcs.set_exit_information(field::GUEST_PHYSICAL_ADDRESS, 0xBB).unwrap();
        let exit = vmcs.complete_exit();
        let info = ExitInfo::read(&vmcs, &exit, ExitInfoOptions::default()).unwrap();
        // Two phases give the same snapshot; the first holds what re-delivery needs.
        let head = ExitHead::read(&vmcs, &exit).unwrap();
        assert_eq!(head.reason.raw(), 48);
        assert_eq!(head.interruption_info.raw(), 0x8000_0202);
        assert_eq!(head, info.head());
        assert_eq!(ExitHead::from(&info), head);
        assert_eq!(head, ExitHead::from_parts(&exit, 48, 0x8000_0202));
        assert_eq!(head.complete(&vmcs, ExitInfoOptions::default()).unwrap(), info);
        assert_eq!(info.reason.basic(), BasicExitReason::EptViolation);
        assert_eq!(info.qualification, 0x1082);
        assert!(info.interruption_info.is_nmi());
        assert_eq!(info.interruption_error_code, 5);
        assert_eq!(info.idt_vectoring_info.raw(), 0x8000_0B0E);
        assert_eq!(info.idt_vectoring_error_code, 6);
        assert_eq!(info.instruction_length, 3);
        assert_eq!(info.instruction_info, 9);
        assert_eq!(info.guest_linear_address, Some(0xAA));
        assert_eq!(info.guest_physical_address, Some(0xBB));
        assert_eq!(info.original_event_data, None);
        match info.decoded_qualification() {
            ExitQualification::EptViolation(q) => {
                assert!(q.write() && q.guest_linear_address_valid());
                assert!(q.nmi_unblocking_due_to_iret());
            }
            other => panic!("{other:?}"),
        }
        // Asking for event data on a CPU without the field fails like hardware (error 12).
        let with_data = ExitInfoOptions { original_event_data: true };
        assert_eq!(
            ExitInfo::read(&vmcs, &exit, with_data).map(|_| ()),
            Err(VmFail::Valid(crate::error::VmInstructionError::UnsupportedVmcsComponent))
        );
        // CPUID exits read neither address.
        vmcs.enter(exit);
        vmcs.set_exit_information(field::EXIT_REASON, 10).unwrap();
        let exit = vmcs.complete_exit();
        let info = ExitInfo::read(&vmcs, &exit, ExitInfoOptions::default()).unwrap();
        assert_eq!(info.guest_physical_address, None);
        assert_eq!(info.guest_linear_address, None);
    }
}
