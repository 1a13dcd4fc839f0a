//! VM-execution, VM-exit and VM-entry controls (SDM Vol. 3C chapter 25.6-25.8) and their
//! adjustment to what the processor allows (SDM Vol. 3D Appendix A.3-A.5).
//!
//! Adjustment takes the controls a hypervisor *needs* and returns the value to write: every
//! bit the capability MSR forces to 1 is added, and a needed bit the processor cannot set is an
//! error naming the control set and bit ([`ControlError`]). With IA32_VMX_BASIC\[55\] the
//! `IA32_VMX_TRUE_*` MSRs are used, so "default1" controls that the processor lets software clear
//! (CR3-load/store exiting, for example) stay clear.
#![forbid(unsafe_code)]

use crate::caps::VmxCapabilities;
use crate::error::VmFail;
use crate::field;
use crate::vmcs::VmcsAccess;
use core::fmt;

#[cfg(test)]
mod fred_tests;

bitflags::bitflags! {
    /// Pin-based VM-execution controls (field 0x4000).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct PinBasedControls: u32 {
        /// Bit 0: external-interrupt exiting.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// Bit 3: NMI exiting.
        const NMI_EXITING = 1 << 3;
        /// Bit 5: virtual NMIs.
        const VIRTUAL_NMIS = 1 << 5;
        /// Bit 6: activate VMX-preemption timer.
        const ACTIVATE_PREEMPTION_TIMER = 1 << 6;
        /// Bit 7: process posted interrupts.
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags::bitflags! {
    /// Primary processor-based VM-execution controls (field 0x4002).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct PrimaryControls: u32 {
        /// Bit 2: interrupt-window exiting.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// Bit 3: use TSC offsetting.
        const USE_TSC_OFFSETTING = 1 << 3;
        /// Bit 7: HLT exiting.
        const HLT_EXITING = 1 << 7;
        /// Bit 9: INVLPG exiting.
        const INVLPG_EXITING = 1 << 9;
        /// Bit 10: MWAIT exiting.
        const MWAIT_EXITING = 1 << 10;
        /// Bit 11: RDPMC exiting.
        const RDPMC_EXITING = 1 << 11;
        /// Bit 12: RDTSC exiting.
        const RDTSC_EXITING = 1 << 12;
        /// Bit 15: CR3-load exiting.
        const CR3_LOAD_EXITING = 1 << 15;
        /// Bit 16: CR3-store exiting.
        const CR3_STORE_EXITING = 1 << 16;
        /// Bit 17: activate tertiary controls.
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        /// Bit 19: CR8-load exiting.
        const CR8_LOAD_EXITING = 1 << 19;
        /// Bit 20: CR8-store exiting.
        const CR8_STORE_EXITING = 1 << 20;
        /// Bit 21: use TPR shadow.
        const USE_TPR_SHADOW = 1 << 21;
        /// Bit 22: NMI-window exiting.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// Bit 23: MOV-DR exiting.
        const MOV_DR_EXITING = 1 << 23;
        /// Bit 24: unconditional I/O exiting.
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// Bit 25: use I/O bitmaps.
        const USE_IO_BITMAPS = 1 << 25;
        /// Bit 27: monitor trap flag.
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// Bit 28: use MSR bitmaps.
        const USE_MSR_BITMAPS = 1 << 28;
        /// Bit 29: MONITOR exiting.
        const MONITOR_EXITING = 1 << 29;
        /// Bit 30: PAUSE exiting.
        const PAUSE_EXITING = 1 << 30;
        /// Bit 31: activate secondary controls.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags::bitflags! {
    /// Secondary processor-based VM-execution controls (field 0x401E).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct SecondaryControls: u32 {
        /// Bit 0: virtualize APIC accesses.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        /// Bit 1: enable EPT.
        const ENABLE_EPT = 1 << 1;
        /// Bit 2: descriptor-table exiting.
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        /// Bit 3: enable RDTSCP.
        const ENABLE_RDTSCP = 1 << 3;
        /// Bit 4: virtualize x2APIC mode.
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        /// Bit 5: enable VPID.
        const ENABLE_VPID = 1 << 5;
        /// Bit 6: WBINVD exiting.
        const WBINVD_EXITING = 1 << 6;
        /// Bit 7: unrestricted guest.
        const UNRESTRICTED_GUEST = 1 << 7;
        /// Bit 8: APIC-register virtualization.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        /// Bit 9: virtual-interrupt delivery.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        /// Bit 10: PAUSE-loop exiting.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// Bit 11: RDRAND exiting.
        const RDRAND_EXITING = 1 << 11;
        /// Bit 12: enable INVPCID.
        const ENABLE_INVPCID = 1 << 12;
        /// Bit 13: enable VM functions.
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        /// Bit 14: VMCS shadowing.
        const VMCS_SHADOWING = 1 << 14;
        /// Bit 15: enable ENCLS exiting.
        const ENABLE_ENCLS_EXITING = 1 << 15;
        /// Bit 16: RDSEED exiting.
        const RDSEED_EXITING = 1 << 16;
        /// Bit 17: enable PML.
        const ENABLE_PML = 1 << 17;
        /// Bit 18: EPT-violation #VE.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Bit 19: conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// Bit 20: enable XSAVES/XRSTORS.
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        /// Bit 21: PASID translation.
        const PASID_TRANSLATION = 1 << 21;
        /// Bit 22: mode-based execute control for EPT.
        const MODE_BASED_EXECUTE_CONTROL = 1 << 22;
        /// Bit 23: sub-page write permissions for EPT.
        const SUB_PAGE_WRITE_PERMISSIONS = 1 << 23;
        /// Bit 24: Intel PT uses guest physical addresses.
        const PT_USES_GUEST_PHYSICAL_ADDRESSES = 1 << 24;
        /// Bit 25: use TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
        /// Bit 26: enable user wait and pause.
        const ENABLE_USER_WAIT_AND_PAUSE = 1 << 26;
        /// Bit 27: enable PCONFIG.
        const ENABLE_PCONFIG = 1 << 27;
        /// Bit 28: enable ENCLV exiting.
        const ENABLE_ENCLV_EXITING = 1 << 28;
        /// Bit 30: VMM bus-lock detection.
        const VMM_BUS_LOCK_DETECTION = 1 << 30;
        /// Bit 31: instruction timeout (NOTIFY exits).
        const INSTRUCTION_TIMEOUT = 1 << 31;
    }
}

bitflags::bitflags! {
    /// Tertiary processor-based VM-execution controls (64-bit field 0x2034).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct TertiaryControls: u64 {
        /// Bit 0: LOADIWKEY exiting.
        const LOADIWKEY_EXITING = 1 << 0;
        /// Bit 1: enable HLAT.
        const ENABLE_HLAT = 1 << 1;
        /// Bit 2: EPT paging-write control.
        const EPT_PAGING_WRITE_CONTROL = 1 << 2;
        /// Bit 3: guest-paging verification.
        const GUEST_PAGING_VERIFICATION = 1 << 3;
        /// Bit 4: IPI virtualization.
        const IPI_VIRTUALIZATION = 1 << 4;
        /// Bit 6: enable MSR-list instructions.
        const ENABLE_MSR_LIST_INSTRUCTIONS = 1 << 6;
        /// Bit 7: virtualize IA32_SPEC_CTRL.
        const VIRTUALIZE_IA32_SPEC_CTRL = 1 << 7;
        /// Bit 8: APIC-timer virtualization.
        const APIC_TIMER_VIRTUALIZATION = 1 << 8;
    }
}

bitflags::bitflags! {
    /// Primary VM-exit controls (field 0x400C).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct ExitControls: u32 {
        /// Bit 2: save debug controls.
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// Bit 9: host address-space size (64-bit host).
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// Bit 12: load IA32_PERF_GLOBAL_CTRL.
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 12;
        /// Bit 15: acknowledge interrupt on exit.
        const ACKNOWLEDGE_INTERRUPT_ON_EXIT = 1 << 15;
        /// Bit 18: save IA32_PAT.
        const SAVE_IA32_PAT = 1 << 18;
        /// Bit 19: load IA32_PAT.
        const LOAD_IA32_PAT = 1 << 19;
        /// Bit 20: save IA32_EFER.
        const SAVE_IA32_EFER = 1 << 20;
        /// Bit 21: load IA32_EFER.
        const LOAD_IA32_EFER = 1 << 21;
        /// Bit 22: save VMX-preemption timer value.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
        /// Bit 23: clear IA32_BNDCFGS.
        const CLEAR_IA32_BNDCFGS = 1 << 23;
        /// Bit 24: conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        /// Bit 25: clear IA32_RTIT_CTL.
        const CLEAR_IA32_RTIT_CTL = 1 << 25;
        /// Bit 26: clear IA32_LBR_CTL.
        const CLEAR_IA32_LBR_CTL = 1 << 26;
        /// Bit 27: clear UINV.
        const CLEAR_UINV = 1 << 27;
        /// Bit 28: load CET state.
        const LOAD_CET_STATE = 1 << 28;
        /// Bit 29: load PKRS.
        const LOAD_PKRS = 1 << 29;
        /// Bit 30: save IA32_PERF_GLOBAL_CTL.
        const SAVE_IA32_PERF_GLOBAL_CTL = 1 << 30;
        /// Bit 31: activate secondary controls.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags::bitflags! {
    /// Secondary VM-exit controls (64-bit field 0x2044).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct SecondaryExitControls: u64 {
        /// Bit 0: save FRED state.
        const SAVE_FRED = 1 << 0;
        /// Bit 1: load FRED state.
        const LOAD_FRED = 1 << 1;
        /// Bit 2: load host IA32_SPEC_CTRL.
        const LOAD_IA32_SPEC_CTRL = 1 << 2;
        /// Bit 3: prematurely busy shadow stack.
        const PREMATURELY_BUSY_SHADOW_STACK = 1 << 3;
    }
}

bitflags::bitflags! {
    /// VM-entry controls (field 0x4012).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct EntryControls: u32 {
        /// Bit 2: load debug controls.
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// Bit 9: IA-32e mode guest.
        const IA32E_MODE_GUEST = 1 << 9;
        /// Bit 10: entry to SMM.
        const ENTRY_TO_SMM = 1 << 10;
        /// Bit 11: deactivate dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        /// Bit 13: load IA32_PERF_GLOBAL_CTRL.
        const LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 13;
        /// Bit 14: load IA32_PAT.
        const LOAD_IA32_PAT = 1 << 14;
        /// Bit 15: load IA32_EFER.
        const LOAD_IA32_EFER = 1 << 15;
        /// Bit 16: load IA32_BNDCFGS.
        const LOAD_IA32_BNDCFGS = 1 << 16;
        /// Bit 17: conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        /// Bit 18: load IA32_RTIT_CTL.
        const LOAD_IA32_RTIT_CTL = 1 << 18;
        /// Bit 19: load UINV.
        const LOAD_UINV = 1 << 19;
        /// Bit 20: load CET state.
        const LOAD_CET_STATE = 1 << 20;
        /// Bit 21: load guest IA32_LBR_CTL.
        const LOAD_IA32_LBR_CTL = 1 << 21;
        /// Bit 22: load PKRS.
        const LOAD_PKRS = 1 << 22;
        /// Bit 23: load FRED state.
        const LOAD_FRED = 1 << 23;
        /// Bit 24: load IA32_SPEC_CTRL.
        const LOAD_IA32_SPEC_CTRL = 1 << 24;
    }
}

/// Which set of controls an error or capability is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ControlSet {
    /// Pin-based VM-execution controls (IA32_VMX_(TRUE_)PINBASED_CTLS).
    PinBased,
    /// Primary processor-based controls (IA32_VMX_(TRUE_)PROCBASED_CTLS).
    Primary,
    /// Secondary processor-based controls (IA32_VMX_PROCBASED_CTLS2).
    Secondary,
    /// Tertiary processor-based controls (IA32_VMX_PROCBASED_CTLS3).
    Tertiary,
    /// Primary VM-exit controls (IA32_VMX_(TRUE_)EXIT_CTLS).
    Exit,
    /// Secondary VM-exit controls (IA32_VMX_EXIT_CTLS2).
    SecondaryExit,
    /// VM-entry controls (IA32_VMX_(TRUE_)ENTRY_CTLS).
    Entry,
}

impl ControlSet {
    /// The SDM name of the set.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PinBased => "pin-based VM-execution controls",
            Self::Primary => "primary processor-based VM-execution controls",
            Self::Secondary => "secondary processor-based VM-execution controls",
            Self::Tertiary => "tertiary processor-based VM-execution controls",
            Self::Exit => "primary VM-exit controls",
            Self::SecondaryExit => "secondary VM-exit controls",
            Self::Entry => "VM-entry controls",
        }
    }
}

/// A control that the processor will not let software have as requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ControlError {
    /// A needed control is 0 in the allowed-1 settings (or the set does not exist on this
    /// processor: its capability MSR is absent).
    CannotSet {
        /// The control set.
        set: ControlSet,
        /// The bit number.
        bit: u8,
    },
    /// A control the caller needs clear is 1 in the allowed-0 settings (forced to 1).
    CannotClear {
        /// The control set.
        set: ControlSet,
        /// The bit number.
        bit: u8,
    },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CannotSet { set, bit } => write!(
                f,
                "{} bit {bit} cannot be set: its allowed-1 setting is 0 (SDM Appendix A)",
                set.name()
            ),
            Self::CannotClear { set, bit } => write!(
                f,
                "{} bit {bit} cannot be cleared: its allowed-0 setting is 1 (SDM Appendix A)",
                set.name()
            ),
        }
    }
}

/// `defmt::Format` for the control bit sets: the raw value in hex (decode with the SDM tables).
#[cfg(feature = "defmt")]
macro_rules! format_as_bits {
    ($($name:ident),* $(,)?) => {$(
        impl defmt::Format for $name {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "{=str}({=u64:#x})", stringify!($name), u64::from(self.bits()));
            }
        }
    )*};
}

#[cfg(feature = "defmt")]
format_as_bits!(
    PinBasedControls,
    PrimaryControls,
    SecondaryControls,
    TertiaryControls,
    ExitControls,
    SecondaryExitControls,
    EntryControls,
);

mod sealed {
    pub trait Sealed {}
}

/// A 32-bit control set's flags ([`PinBasedControls`], [`PrimaryControls`],
/// [`SecondaryControls`], [`ExitControls`], [`EntryControls`]): what
/// [`AllowedControls::allows`] takes. Sealed: implemented only for these types.
pub trait ControlFlags: sealed::Sealed + Copy {
    /// The raw control bits.
    fn raw(self) -> u32;
}

macro_rules! control_flags {
    ($($name:ident),* $(,)?) => {$(
        impl sealed::Sealed for $name {}
        impl ControlFlags for $name {
            #[inline(always)]
            fn raw(self) -> u32 {
                self.bits()
            }
        }
    )*};
}

control_flags!(PinBasedControls, PrimaryControls, SecondaryControls, ExitControls, EntryControls);

/// The allowed settings of a 32-bit control set: a capability MSR's low half is the allowed-0
/// settings (a 1 means the control must be 1), its high half the allowed-1 settings (a 0 means
/// the control must be 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AllowedControls {
    /// Bits that must be 1.
    pub must_be_one: u32,
    /// Bits that may be 1.
    pub may_be_one: u32,
}

impl AllowedControls {
    /// Splits a capability MSR value.
    pub const fn from_msr(value: u64) -> Self {
        Self { must_be_one: value as u32, may_be_one: (value >> 32) as u32 }
    }

    /// Whether every control in `controls` may be 1 (its allowed-1 bit is set). `controls` are
    /// flags of the set these settings belong to (`caps.primary_controls().allows(
    /// PrimaryControls::MONITOR_TRAP_FLAG)`); an empty set is always allowed.
    ///
    /// ```
    /// use hvkit_vmx_core::controls::{AllowedControls, PrimaryControls};
    ///
    /// // IA32_VMX_PROCBASED_CTLS with only bits 7 (HLT exiting) and 31 allowed to be 1.
    /// let allowed = AllowedControls::from_msr(0x8000_0080_0000_0000);
    /// assert!(allowed.allows(PrimaryControls::HLT_EXITING));
    /// assert!(!allowed.allows(PrimaryControls::MONITOR_TRAP_FLAG));
    /// assert!(!allowed.allows(PrimaryControls::HLT_EXITING | PrimaryControls::MONITOR_TRAP_FLAG));
    /// ```
    #[inline]
    pub fn allows<C: ControlFlags>(self, controls: C) -> bool {
        self.allows_bits(controls.raw())
    }

    /// Whether every bit of `bits` may be 1: the raw form of [`allows`](Self::allows) for
    /// `const` code, which cannot call the trait-generic method; pass named controls
    /// (`PrimaryControls::MONITOR_TRAP_FLAG.bits()`), not bit numbers.
    pub const fn allows_bits(self, bits: u32) -> bool {
        bits & !self.may_be_one == 0
    }

    /// The value to write for `needed` controls that must also keep `forbidden` ones clear.
    pub fn adjust(self, set: ControlSet, needed: u32, forbidden: u32) -> Result<u32, ControlError> {
        let not_allowed = needed & !self.may_be_one;
        if not_allowed != 0 {
            return Err(ControlError::CannotSet { set, bit: not_allowed.trailing_zeros() as u8 });
        }
        let forced = forbidden & self.must_be_one;
        if forced != 0 {
            return Err(ControlError::CannotClear { set, bit: forced.trailing_zeros() as u8 });
        }
        Ok(needed | self.must_be_one)
    }
}

/// The allowed-1 settings of a 64-bit control set (tertiary and secondary VM-exit controls have
/// no allowed-0 half: every bit may be 0).
fn adjust_64(set: ControlSet, allowed: Option<u64>, needed: u64) -> Result<u64, ControlError> {
    let not_allowed = needed & !allowed.unwrap_or(0);
    if not_allowed != 0 {
        return Err(ControlError::CannotSet { set, bit: not_allowed.trailing_zeros() as u8 });
    }
    Ok(needed)
}

/// What a hypervisor needs from each control set. The activation bits (primary bits 17 and 31,
/// exit bit 31) are added automatically when the tertiary, secondary or secondary-exit set is
/// non-empty.
///
/// ```
/// use hvkit_vmx_core::controls::{
///     ControlRequest, EntryControls, ExitControls, PinBasedControls, SecondaryExitControls,
/// };
///
/// // NMI exiting with virtual NMIs, a 64-bit host that acknowledges interrupts on exit, a
/// // 64-bit guest, FRED state switched on entry and exit.
/// let request = ControlRequest {
///     pin: PinBasedControls::NMI_EXITING | PinBasedControls::VIRTUAL_NMIS,
///     exit: ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
///     entry: EntryControls::IA32E_MODE_GUEST,
///     ..ControlRequest::default()
/// }
/// .with_fred_state();
/// assert!(request.entry.contains(EntryControls::LOAD_FRED));
/// assert!(request.secondary_exit.contains(SecondaryExitControls::SAVE_FRED));
/// // `controls::adjust(&caps, &request)?` then gives the values the processor allows (see the
/// // crate example), and `AdjustedControls::write` writes them.
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ControlRequest {
    /// Needed pin-based controls.
    pub pin: PinBasedControls,
    /// Needed primary processor-based controls.
    pub primary: PrimaryControls,
    /// Needed secondary processor-based controls.
    pub secondary: SecondaryControls,
    /// Needed tertiary processor-based controls.
    pub tertiary: TertiaryControls,
    /// Needed primary VM-exit controls.
    pub exit: ExitControls,
    /// Needed secondary VM-exit controls.
    pub secondary_exit: SecondaryExitControls,
    /// Needed VM-entry controls.
    pub entry: EntryControls,
}

impl ControlRequest {
    /// `self` plus the FRED state controls: VM-entry "load FRED" (bit 23) and the secondary
    /// VM-exit controls "save FRED" (bit 0) and "load FRED" (bit 1), which [`adjust`]
    /// activates with primary VM-exit control bit 31. Ask only where
    /// [`VmxCapabilities::fred_controls`] reports them all; otherwise [`adjust`] fails naming
    /// the first missing bit.
    pub fn with_fred_state(self) -> Self {
        Self {
            entry: self.entry | EntryControls::LOAD_FRED,
            secondary_exit: self.secondary_exit
                | SecondaryExitControls::SAVE_FRED
                | SecondaryExitControls::LOAD_FRED,
            ..self
        }
    }
}

/// The values to write into the control fields, produced by [`adjust`].
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdjustedControls {
    /// For field 0x4000.
    pub pin: PinBasedControls,
    /// For field 0x4002.
    pub primary: PrimaryControls,
    /// For field 0x401E (only meaningful when the primary bit 31 is set).
    pub secondary: SecondaryControls,
    /// For field 0x2034 (only meaningful when the primary bit 17 is set).
    pub tertiary: TertiaryControls,
    /// For field 0x400C.
    pub exit: ExitControls,
    /// For field 0x2044 (only meaningful when exit bit 31 is set).
    pub secondary_exit: SecondaryExitControls,
    /// For field 0x4012.
    pub entry: EntryControls,
}

impl AdjustedControls {
    /// The "acknowledge interrupt on exit" VM-exit control (bit 15) as adjusted: the value to
    /// give `hvkit_nmi_reinject::handle_host_event` for every exit of a VMCS written with these
    /// controls (SDM Vol. 3C 25.7.1: with it set, an external-interrupt exit acknowledges the
    /// interrupt and stores its vector in the exit interruption information).
    pub const fn acknowledges_interrupt_on_exit(&self) -> bool {
        self.exit.contains(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT)
    }

    /// VM entry loads the guest FRED state and VM exit saves it and loads the host's: entry
    /// bit 23, exit bit 31 and secondary exit bits 0 and 1 all set.
    pub const fn fred_state(&self) -> bool {
        self.entry.contains(EntryControls::LOAD_FRED)
            && self.exit.contains(ExitControls::ACTIVATE_SECONDARY_CONTROLS)
            && self
                .secondary_exit
                .contains(SecondaryExitControls::SAVE_FRED.union(SecondaryExitControls::LOAD_FRED))
    }

    /// The `(encoding, value)` pairs [`write`](Self::write) writes: the pin-based (0x4000),
    /// primary (0x4002), primary exit (0x400C) and entry (0x4012) controls always; the
    /// secondary (0x401E), tertiary (0x2034) and secondary VM-exit (0x2044) controls only when
    /// their activation bit (primary 31, primary 17, exit 31) is set, since a processor
    /// without them rejects the field (VM-instruction error 12).
    pub fn fields(&self) -> [Option<(u32, u64)>; 7] {
        let primary = self.primary;
        let optional =
            |active: bool, encoding: u32, value: u64| active.then_some((encoding, value));
        [
            Some((field::PIN_BASED_VM_EXECUTION_CONTROLS.encoding(), self.pin.bits().into())),
            Some((
                field::PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS.encoding(),
                primary.bits().into(),
            )),
            optional(
                primary.contains(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS),
                field::SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS.encoding(),
                self.secondary.bits().into(),
            ),
            optional(
                primary.contains(PrimaryControls::ACTIVATE_TERTIARY_CONTROLS),
                field::TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS.encoding(),
                self.tertiary.bits(),
            ),
            Some((field::PRIMARY_VM_EXIT_CONTROLS.encoding(), self.exit.bits().into())),
            optional(
                self.exit.contains(ExitControls::ACTIVATE_SECONDARY_CONTROLS),
                field::SECONDARY_VM_EXIT_CONTROLS.encoding(),
                self.secondary_exit.bits(),
            ),
            Some((field::VM_ENTRY_CONTROLS.encoding(), self.entry.bits().into())),
        ]
    }

    /// Writes every control field of [`fields`](Self::fields) to `vmcs`. On a failure the
    /// VMCS is left as it was: every field is read before the first write, and the fields
    /// already written are restored.
    pub fn write(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
        let fields = self.fields();
        let mut previous = [0u64; 7];
        for (old, entry) in previous.iter_mut().zip(fields) {
            if let Some((encoding, _)) = entry {
                *old = vmcs.read_raw(encoding)?;
            }
        }
        for (written, (encoding, value)) in fields.iter().flatten().enumerate() {
            if let Err(fail) = vmcs.write_raw(*encoding, *value) {
                let done = fields
                    .iter()
                    .zip(previous)
                    .filter_map(|(entry, old)| entry.map(|(encoding, _)| (encoding, old)));
                for (encoding, old) in done.take(written) {
                    // Best effort: the field was writable a moment ago.
                    let _ = vmcs.write_raw(encoding, old);
                }
                return Err(fail);
            }
        }
        Ok(())
    }
}

/// Adjusts every control set of `request` to `caps`. Uses the TRUE capability MSRs when
/// IA32_VMX_BASIC\[55\] is set.
pub fn adjust(
    caps: &VmxCapabilities,
    request: &ControlRequest,
) -> Result<AdjustedControls, ControlError> {
    let mut primary = request.primary;
    if !request.secondary.is_empty() {
        primary |= PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
    }
    if !request.tertiary.is_empty() {
        primary |= PrimaryControls::ACTIVATE_TERTIARY_CONTROLS;
    }
    let mut exit = request.exit;
    if !request.secondary_exit.is_empty() {
        exit |= ExitControls::ACTIVATE_SECONDARY_CONTROLS;
    }
    let pin = caps.pin_controls().adjust(ControlSet::PinBased, request.pin.bits(), 0)?;
    let primary = caps.primary_controls().adjust(ControlSet::Primary, primary.bits(), 0)?;
    let secondary = match caps.secondary_controls() {
        Some(allowed) => allowed.adjust(ControlSet::Secondary, request.secondary.bits(), 0)?,
        None => adjust_64(ControlSet::Secondary, None, request.secondary.bits().into())? as u32,
    };
    let tertiary =
        adjust_64(ControlSet::Tertiary, caps.tertiary_controls(), request.tertiary.bits())?;
    let exit = caps.exit_controls().adjust(ControlSet::Exit, exit.bits(), 0)?;
    let secondary_exit = adjust_64(
        ControlSet::SecondaryExit,
        caps.secondary_exit_controls(),
        request.secondary_exit.bits(),
    )?;
    let entry = caps.entry_controls().adjust(ControlSet::Entry, request.entry.bits(), 0)?;
    Ok(AdjustedControls {
        pin: PinBasedControls::from_bits_retain(pin),
        primary: PrimaryControls::from_bits_retain(primary),
        secondary: SecondaryControls::from_bits_retain(secondary),
        tertiary: TertiaryControls::from_bits_retain(tertiary),
        exit: ExitControls::from_bits_retain(exit),
        secondary_exit: SecondaryExitControls::from_bits_retain(secondary_exit),
        entry: EntryControls::from_bits_retain(entry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{RecordedMsrs, VmxCapabilities, msr};

    /// Recorded from Bochs 2.7 corei7_skylake_x.
    pub(crate) const SKYLAKE_X: &[(u32, u64)] = crate::caps::recorded::BOCHS_2_7_SKYLAKE_X;

    /// Recorded from an upstream Bochs build with FRED (cpu model wildcat_lake).
    pub(crate) const WILDCAT_LAKE: &[(u32, u64)] = &[
        (msr::IA32_VMX_BASIC, 0x04D8_1000_0000_0004),
        (msr::IA32_VMX_PINBASED_CTLS, 0x0000_00FF_0000_0016),
        (msr::IA32_VMX_PROCBASED_CTLS, 0xFFFB_FFFE_0401_E172),
        (msr::IA32_VMX_EXIT_CTLS, 0xC07F_FFFF_0003_6DFF),
        (msr::IA32_VMX_ENTRY_CTLS, 0x0000_FFFF_0000_11FF),
        (msr::IA32_VMX_MISC, 0x6004_01E0),
        (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (msr::IA32_VMX_CR0_FIXED1, 0xFFFF_FFFF),
        (msr::IA32_VMX_CR4_FIXED0, 0x2000),
        (msr::IA32_VMX_CR4_FIXED1, 0x0000_0001_0837_2FFF),
        (msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_00FF_0000_0016),
        (msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xFFFB_FFFE_0400_6172),
        (msr::IA32_VMX_TRUE_EXIT_CTLS, 0xC07F_FFFF_0003_6DFB),
        (msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_FFFF_0000_11FB),
        // Secondary, tertiary and EXIT_CTLS2 values were not recorded: modelled as offering
        // nothing, which is what the FRED load/save checks need (not offered by that Bochs model).
        (msr::IA32_VMX_PROCBASED_CTLS2, 0),
        (msr::IA32_VMX_PROCBASED_CTLS3, 0),
        (msr::IA32_VMX_EXIT_CTLS2, 0),
    ];

    pub(super) fn minimal() -> ControlRequest {
        ControlRequest {
            exit: ExitControls::HOST_ADDRESS_SPACE_SIZE,
            entry: EntryControls::IA32E_MODE_GUEST,
            ..ControlRequest::default()
        }
    }

    #[test]
    fn bochs_skylake_gives_the_values_that_launched_a_guest() {
        let caps = VmxCapabilities::read(&RecordedMsrs(SKYLAKE_X)).unwrap();
        let adjusted = adjust(&caps, &minimal()).unwrap();
        assert_eq!(adjusted.pin.bits(), 0x16);
        assert_eq!(adjusted.primary.bits(), 0x0400_6172);
        assert_eq!(adjusted.exit.bits(), 0x0003_6FFB);
        assert_eq!(adjusted.entry.bits(), 0x13FB);
    }

    #[test]
    fn acknowledge_on_exit_is_read_from_exit_control_bit_15() {
        let caps = VmxCapabilities::read(&RecordedMsrs(SKYLAKE_X)).unwrap();
        assert!(!adjust(&caps, &minimal()).unwrap().acknowledges_interrupt_on_exit());
        let request = ControlRequest {
            exit: minimal().exit | ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
            ..minimal()
        };
        let adjusted = adjust(&caps, &request).unwrap();
        assert_eq!(adjusted.exit.bits() & (1 << 15), 1 << 15);
        assert!(adjusted.acknowledges_interrupt_on_exit());
        // Another exit control with bit 15 clear does not count.
        let other =
            AdjustedControls { exit: ExitControls::from_bits_retain(!(1 << 15)), ..adjusted };
        assert!(!other.acknowledges_interrupt_on_exit());
    }

    #[test]
    fn exit_info_options_read_original_event_data_where_basic_bit_58_is_set() {
        use crate::exit::ExitInfoOptions;
        // Bochs 2.7 corei7_skylake_x: IA32_VMX_BASIC = 0x00D8_1000_0000_002B, bit 58 clear.
        let skylake = VmxCapabilities::read(&RecordedMsrs(SKYLAKE_X)).unwrap();
        assert!(!ExitInfoOptions::from_capabilities(&skylake).original_event_data);
        // Upstream Bochs wildcat_lake: IA32_VMX_BASIC = 0x04D8_1000_0000_0004, bit 58 set.
        let wildcat = VmxCapabilities::read(&RecordedMsrs(WILDCAT_LAKE)).unwrap();
        assert!(ExitInfoOptions::from_capabilities(&wildcat).original_event_data);
    }

    #[test]
    fn wildcat_lake_same_request_same_values() {
        let caps = VmxCapabilities::read(&RecordedMsrs(WILDCAT_LAKE)).unwrap();
        let adjusted = adjust(&caps, &minimal()).unwrap();
        assert_eq!(adjusted.pin.bits(), 0x16);
        assert_eq!(adjusted.primary.bits(), 0x0400_6172);
        assert_eq!(adjusted.exit.bits(), 0x0003_6FFB);
        assert_eq!(adjusted.entry.bits(), 0x13FB);
    }

    #[test]
    fn fred_load_is_refused_where_not_offered() {
        let caps = VmxCapabilities::read(&RecordedMsrs(WILDCAT_LAKE)).unwrap();
        let mut request = minimal();
        request.entry |= EntryControls::LOAD_FRED;
        assert_eq!(
            adjust(&caps, &request),
            Err(ControlError::CannotSet { set: ControlSet::Entry, bit: 23 })
        );
        let mut request = minimal();
        request.secondary_exit = SecondaryExitControls::LOAD_FRED;
        assert_eq!(
            adjust(&caps, &request),
            Err(ControlError::CannotSet { set: ControlSet::SecondaryExit, bit: 1 })
        );
        // Skylake has no EXIT_CTLS2 at all (exit allowed-1 bit 31 is 0): the activation bit
        // is what fails first.
        let caps = VmxCapabilities::read(&RecordedMsrs(SKYLAKE_X)).unwrap();
        assert_eq!(
            adjust(&caps, &request),
            Err(ControlError::CannotSet { set: ControlSet::Exit, bit: 31 })
        );
    }

    #[test]
    fn activation_bits_follow_the_optional_sets() {
        let caps = VmxCapabilities::read(&RecordedMsrs(SKYLAKE_X)).unwrap();
        let mut request = minimal();
        request.pin = PinBasedControls::NMI_EXITING | PinBasedControls::VIRTUAL_NMIS;
        request.primary = PrimaryControls::NMI_WINDOW_EXITING;
        request.exit |= ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT;
        let adjusted = adjust(&caps, &request).unwrap();
        assert_eq!(adjusted.pin.bits(), 0x16 | 0x28);
        assert_eq!(adjusted.primary.bits(), 0x0440_6172);
        assert_eq!(adjusted.exit.bits(), 0x0003_EFFB);
        // The recorded Bochs 2.7 Skylake has no PROCBASED_CTLS2: asking for EPT fails on the
        // secondary set, not silently.
        let mut request = minimal();
        request.secondary = SecondaryControls::ENABLE_EPT;
        assert_eq!(
            adjust(&caps, &request),
            Err(ControlError::CannotSet { set: ControlSet::Secondary, bit: 1 })
        );
    }

    #[test]
    fn allowed_settings_both_directions() {
        let allowed = AllowedControls::from_msr(0x0000_00F0_0000_0030);
        assert_eq!(allowed.adjust(ControlSet::PinBased, 0x40, 0), Ok(0x70));
        assert_eq!(
            allowed.adjust(ControlSet::PinBased, 0x100, 0),
            Err(ControlError::CannotSet { set: ControlSet::PinBased, bit: 8 })
        );
        assert_eq!(
            allowed.adjust(ControlSet::PinBased, 0, 0x20),
            Err(ControlError::CannotClear { set: ControlSet::PinBased, bit: 5 })
        );
        assert!(allowed.allows_bits(1 << 7) && !allowed.allows_bits(1 << 8));
        assert!(!allowed.allows_bits(0x180), "one disallowed bit (8) refuses the mask");
        let text = std::format!("{}", ControlError::CannotSet { set: ControlSet::Entry, bit: 23 });
        assert_eq!(
            text,
            "VM-entry controls bit 23 cannot be set: its allowed-1 setting is 0 (SDM Appendix A)"
        );
    }

    /// Skylake with the optional sets added (a processor like the ones KVM runs on): primary
    /// allowed-1 bit 17 (tertiary), exit allowed-1 bit 31 (secondary exit), and
    /// IA32_VMX_PROCBASED_CTLS2 (EPT, VPID, unrestricted guest; bit 2 forced to 1 to exercise
    /// the allowed-0 half), IA32_VMX_PROCBASED_CTLS3 (IPI virtualization) and
    /// IA32_VMX_EXIT_CTLS2 (save/load FRED).
    const WITH_OPTIONAL_SETS: &[(u32, u64)] = &[
        (msr::IA32_VMX_BASIC, 0x00D8_1000_0000_002B),
        (msr::IA32_VMX_PINBASED_CTLS, 0x0000_007F_0000_0016),
        (msr::IA32_VMX_PROCBASED_CTLS, 0xF7FB_FFFE_0401_E172),
        (msr::IA32_VMX_EXIT_CTLS, 0x807F_FFFF_0003_6DFF),
        (msr::IA32_VMX_ENTRY_CTLS, 0x0000_FFFF_0000_11FF),
        (msr::IA32_VMX_MISC, 0x0000_0000_6004_01E0),
        (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (msr::IA32_VMX_CR0_FIXED1, 0xFFFF_FFFF),
        (msr::IA32_VMX_CR4_FIXED0, 0x2000),
        (msr::IA32_VMX_CR4_FIXED1, 0x0037_27FF),
        (msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007F_0000_0016),
        (msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xF7FB_FFFE_0400_6172),
        (msr::IA32_VMX_TRUE_EXIT_CTLS, 0x807F_FFFF_0003_6DFB),
        (msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_FFFF_0000_11FB),
        (msr::IA32_VMX_PROCBASED_CTLS2, 0x0000_00A6_0000_0004),
        (msr::IA32_VMX_PROCBASED_CTLS3, 0x10),
        (msr::IA32_VMX_EXIT_CTLS2, 0x3),
    ];

    #[test]
    fn optional_sets_are_adjusted_and_activated() {
        let caps = VmxCapabilities::read(&RecordedMsrs(WITH_OPTIONAL_SETS)).unwrap();
        let mut request = minimal();
        request.secondary = SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST;
        request.tertiary = TertiaryControls::IPI_VIRTUALIZATION;
        request.secondary_exit = SecondaryExitControls::SAVE_FRED;
        let adjusted = adjust(&caps, &request).unwrap();
        assert_eq!(adjusted.primary.bits(), 0x0400_6172 | (1 << 31) | (1 << 17));
        assert_eq!(adjusted.secondary.bits(), 0x86, "EPT, unrestricted guest, forced bit 2");
        assert_eq!(adjusted.tertiary.bits(), 0x10);
        assert_eq!(adjusted.exit.bits(), 0x0003_6FFB | (1 << 31));
        assert_eq!(adjusted.secondary_exit.bits(), 1);
        assert_eq!(adjusted.pin.bits(), 0x16);
        assert_eq!(adjusted.entry.bits(), 0x13FB);
        // Empty optional sets leave their activation bits clear, even where allowed.
        let adjusted = adjust(&caps, &minimal()).unwrap();
        assert_eq!(adjusted.primary.bits(), 0x0400_6172);
        assert_eq!(adjusted.exit.bits(), 0x0003_6FFB);
        assert_eq!(adjusted.secondary.bits(), 0x04);
        assert_eq!(adjusted.tertiary.bits(), 0);
        assert_eq!(adjusted.secondary_exit.bits(), 0);
        // Bits the 64-bit sets do not offer are named.
        let mut request = minimal();
        request.tertiary = TertiaryControls::IPI_VIRTUALIZATION | TertiaryControls::ENABLE_HLAT;
        assert_eq!(
            adjust(&caps, &request),
            Err(ControlError::CannotSet { set: ControlSet::Tertiary, bit: 1 })
        );
        let mut request = minimal();
        request.secondary_exit = SecondaryExitControls::LOAD_IA32_SPEC_CTRL;
        assert_eq!(
            adjust(&caps, &request),
            Err(ControlError::CannotSet { set: ControlSet::SecondaryExit, bit: 2 })
        );
        let mut request = minimal();
        request.secondary = SecondaryControls::VMCS_SHADOWING;
        assert_eq!(
            adjust(&caps, &request),
            Err(ControlError::CannotSet { set: ControlSet::Secondary, bit: 14 })
        );
    }

    #[test]
    fn allows_checks_each_named_control_bit_of_its_set() {
        // Only bit 6 may be 1 (a 1 in the allowed-0 half forces a bit, it does not allow it).
        let only_6 = AllowedControls::from_msr(0x0000_0040_FFFF_FFFF);
        assert!(only_6.allows(PinBasedControls::ACTIVATE_PREEMPTION_TIMER)); // bit 6
        assert!(!only_6.allows(PinBasedControls::VIRTUAL_NMIS)); // bit 5
        assert!(!only_6.allows(PinBasedControls::PROCESS_POSTED_INTERRUPTS)); // bit 7
        assert!(only_6.allows(SecondaryControls::WBINVD_EXITING)); // bit 6 of another set
        assert!(!only_6.allows(SecondaryControls::UNRESTRICTED_GUEST));
        assert!(only_6.allows(PrimaryControls::empty()), "nothing requested, nothing refused");
        // Several controls: all must be allowed.
        let bits_7_31 = AllowedControls::from_msr(0x8000_0080_0000_0000);
        assert!(
            bits_7_31.allows(
                PrimaryControls::HLT_EXITING | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS
            )
        );
        assert!(
            !bits_7_31.allows(PrimaryControls::HLT_EXITING | PrimaryControls::MONITOR_TRAP_FLAG)
        );
        assert!(bits_7_31.allows(ExitControls::ACTIVATE_SECONDARY_CONTROLS));
        assert!(!bits_7_31.allows(EntryControls::LOAD_FRED));
        // The typed and the raw forms agree on every single control bit.
        for bit in 0..32 {
            let flag = PrimaryControls::from_bits_retain(1 << bit);
            assert_eq!(bits_7_31.allows(flag), bits_7_31.allows_bits(1 << bit), "bit {bit}");
            assert_eq!(bits_7_31.allows(flag), bit == 7 || bit == 31, "bit {bit}");
        }
    }

    #[test]
    fn allows_bits_boundaries() {
        let all = AllowedControls::from_msr(0xFFFF_FFFF_0000_0000);
        assert!(all.allows_bits(1) && all.allows_bits(1 << 31) && all.allows_bits(u32::MAX));
        let top = AllowedControls::from_msr(0x8000_0000_0000_0000);
        assert!(top.allows_bits(1 << 31) && !top.allows_bits(1 << 30) && !top.allows_bits(1));
        let none = AllowedControls::from_msr(0x0000_0000_FFFF_FFFF);
        assert!(
            (0..32).all(|bit| !none.allows_bits(1 << bit)),
            "allowed-0 half says nothing about 1"
        );
        assert!(none.allows_bits(0), "nothing requested, nothing refused");
        assert_eq!(none, AllowedControls { must_be_one: u32::MAX, may_be_one: 0 });
    }

    #[test]
    fn forced_bits_are_kept_when_also_needed() {
        let allowed = AllowedControls::from_msr(0x0000_00F0_0000_0030);
        // Needing a bit that is forced anyway: the value is the union, not a toggle.
        assert_eq!(allowed.adjust(ControlSet::Exit, 0x20, 0), Ok(0x30));
        assert_eq!(allowed.adjust(ControlSet::Exit, 0x30, 0), Ok(0x30));
        assert_eq!(allowed.adjust(ControlSet::Exit, 0, 0), Ok(0x30));
        assert_eq!(allowed.adjust(ControlSet::Exit, 0xC0, 0x40), Ok(0xF0));
        // The lowest offending bit is named.
        assert_eq!(
            allowed.adjust(ControlSet::Exit, 0x300, 0),
            Err(ControlError::CannotSet { set: ControlSet::Exit, bit: 8 })
        );
        assert_eq!(
            allowed.adjust(ControlSet::Exit, 0, 0x30),
            Err(ControlError::CannotClear { set: ControlSet::Exit, bit: 4 })
        );
    }

    #[test]
    fn errors_name_the_set_and_bit() {
        let names = [
            (ControlSet::PinBased, "pin-based VM-execution controls"),
            (ControlSet::Primary, "primary processor-based VM-execution controls"),
            (ControlSet::Secondary, "secondary processor-based VM-execution controls"),
            (ControlSet::Tertiary, "tertiary processor-based VM-execution controls"),
            (ControlSet::Exit, "primary VM-exit controls"),
            (ControlSet::SecondaryExit, "secondary VM-exit controls"),
            (ControlSet::Entry, "VM-entry controls"),
        ];
        for (set, name) in names {
            assert_eq!(set.name(), name);
        }
        assert_eq!(
            std::format!("{}", ControlError::CannotClear { set: ControlSet::Primary, bit: 15 }),
            "primary processor-based VM-execution controls bit 15 cannot be cleared: its \
             allowed-0 setting is 1 (SDM Appendix A)"
        );
    }

    #[test]
    fn control_bits_match_the_sdm() {
        assert_eq!(PinBasedControls::NMI_EXITING.bits(), 1 << 3);
        assert_eq!(PinBasedControls::VIRTUAL_NMIS.bits(), 1 << 5);
        assert_eq!(PrimaryControls::INTERRUPT_WINDOW_EXITING.bits(), 1 << 2);
        assert_eq!(PrimaryControls::NMI_WINDOW_EXITING.bits(), 1 << 22);
        assert_eq!(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT.bits(), 1 << 15);
        assert_eq!(ExitControls::ACTIVATE_SECONDARY_CONTROLS.bits(), 1 << 31);
        assert_eq!(SecondaryExitControls::SAVE_FRED.bits(), 1);
        assert_eq!(SecondaryExitControls::LOAD_FRED.bits(), 2);
        assert_eq!(EntryControls::LOAD_FRED.bits(), 1 << 23);
        assert_eq!(SecondaryControls::UNRESTRICTED_GUEST.bits(), 1 << 7);
    }
}
