//! VMX capability MSRs (SDM Vol. 3D Appendix A): reading them
//! safely and decoding them.
//!
//! MSRs are read through [`CapabilityMsrs`], so the decoding and the control adjustment in
//! [`controls`](crate::controls) run on recorded values in tests. [`VmxCapabilities::read`] only
//! asks for an optional MSR after the bit that says it exists (reading an absent MSR raises
//! #GP on hardware).

use crate::controls::{AllowedControls, EntryControls, ExitControls};
use core::fmt;

/// MSR numbers.
pub mod msr {
    /// IA32_FEATURE_CONTROL.
    pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
    /// IA32_VMX_BASIC.
    pub const IA32_VMX_BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS.
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS.
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_EXIT_CTLS.
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    /// IA32_VMX_ENTRY_CTLS.
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    /// IA32_VMX_MISC.
    pub const IA32_VMX_MISC: u32 = 0x485;
    /// IA32_VMX_CR0_FIXED0.
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    /// IA32_VMX_CR0_FIXED1.
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    /// IA32_VMX_CR4_FIXED0.
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    /// IA32_VMX_CR4_FIXED1.
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    /// IA32_VMX_VMCS_ENUM.
    pub const IA32_VMX_VMCS_ENUM: u32 = 0x48A;
    /// IA32_VMX_PROCBASED_CTLS2.
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
    /// IA32_VMX_EPT_VPID_CAP.
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
    /// IA32_VMX_TRUE_PINBASED_CTLS.
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
    /// IA32_VMX_TRUE_PROCBASED_CTLS.
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
    /// IA32_VMX_TRUE_EXIT_CTLS.
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
    /// IA32_VMX_TRUE_ENTRY_CTLS.
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    /// IA32_VMX_VMFUNC.
    pub const IA32_VMX_VMFUNC: u32 = 0x491;
    /// IA32_VMX_PROCBASED_CTLS3.
    pub const IA32_VMX_PROCBASED_CTLS3: u32 = 0x492;
    /// IA32_VMX_EXIT_CTLS2.
    pub const IA32_VMX_EXIT_CTLS2: u32 = 0x493;
}

/// Reads MSRs. `None` means the MSR is absent (or, for recorded values, not recorded).
pub trait CapabilityMsrs {
    /// Reads `msr`.
    fn read_msr(&self, msr: u32) -> Option<u64>;
}

/// Capability MSRs recorded from emulators, to test configuration code (capability reading,
/// control adjustment, derived contexts) without hardware, through [`RecordedMsrs`].
pub mod recorded {
    use super::msr;

    /// Bochs 2.7 (Debian 12) `corei7_skylake_x`: IA32_FEATURE_CONTROL, the basic, control,
    /// miscellaneous and fixed-bit MSRs and the TRUE controls, as that model reports them (no
    /// secondary controls were recorded).
    ///
    /// ```
    /// use hvkit_vmx_core::caps::{RecordedMsrs, VmxCapabilities, recorded};
    /// let caps = VmxCapabilities::read(&RecordedMsrs(recorded::BOCHS_2_7_SKYLAKE_X)).unwrap();
    /// assert_eq!(caps.basic.revision_id(), 0x2B);
    /// assert!(caps.basic.true_controls());
    /// ```
    pub const BOCHS_2_7_SKYLAKE_X: &[(u32, u64)] = &[
        (msr::IA32_FEATURE_CONTROL, 0x5),
        (msr::IA32_VMX_BASIC, 0x00D8_1000_0000_002B),
        (msr::IA32_VMX_PINBASED_CTLS, 0x0000_007F_0000_0016),
        (msr::IA32_VMX_PROCBASED_CTLS, 0xF7F9_FFFE_0401_E172),
        (msr::IA32_VMX_EXIT_CTLS, 0x007F_FFFF_0003_6DFF),
        (msr::IA32_VMX_ENTRY_CTLS, 0x0000_FFFF_0000_11FF),
        (msr::IA32_VMX_MISC, 0x0000_0000_6004_01E0),
        (msr::IA32_VMX_CR0_FIXED0, 0x8000_0021),
        (msr::IA32_VMX_CR0_FIXED1, 0xFFFF_FFFF),
        (msr::IA32_VMX_CR4_FIXED0, 0x2000),
        (msr::IA32_VMX_CR4_FIXED1, 0x0037_27FF),
        (msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007F_0000_0016),
        (msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xF7F9_FFFE_0400_6172),
        (msr::IA32_VMX_TRUE_EXIT_CTLS, 0x007F_FFFF_0003_6DFB),
        (msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_FFFF_0000_11FB),
    ];
}

/// Recorded MSR values, for tests and tools: `(msr, value)` pairs.
#[derive(Debug, Clone, Copy)]
pub struct RecordedMsrs<'a>(pub &'a [(u32, u64)]);

impl CapabilityMsrs for RecordedMsrs<'_> {
    fn read_msr(&self, msr: u32) -> Option<u64> {
        self.0.iter().find(|(number, _)| *number == msr).map(|(_, value)| *value)
    }
}

/// RDMSR on this processor, for IA32_FEATURE_CONTROL (0x3A) and the VMX capability MSRs
/// (0x480-0x493) only: [`CapabilityMsrs::read_msr`] answers `None` for every other number, so no
/// safe call reads an arbitrary MSR.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct HardwareMsrs {
    _cpl0: (),
}

#[cfg(target_arch = "x86_64")]
impl HardwareMsrs {
    /// Access to this processor's MSRs.
    ///
    /// # Safety
    ///
    /// The caller runs at CPL 0 on a processor with VMX (CPUID.1:ECX\[5\]), so that the
    /// IA32_VMX_* MSRs that [`VmxCapabilities::read`] asks for exist.
    pub const unsafe fn new() -> Self {
        Self { _cpl0: () }
    }
}

#[cfg(target_arch = "x86_64")]
impl CapabilityMsrs for HardwareMsrs {
    fn read_msr(&self, msr: u32) -> Option<u64> {
        if !is_vmx_capability_msr(msr) {
            return None;
        }
        // SAFETY: CPL 0 and VMX are the constructor's contract; the number is
        // IA32_FEATURE_CONTROL or a VMX capability MSR, and VmxCapabilities::read asks for the
        // optional ones (secondary, tertiary, EPT/VPID, VM functions, EXIT_CTLS2) only after the
        // controls that announce them.
        Some(unsafe { x86::msr::rdmsr(msr) })
    }
}

/// `true` for the MSRs [`HardwareMsrs`] reads: IA32_FEATURE_CONTROL and IA32_VMX_BASIC ..
/// IA32_VMX_EXIT_CTLS2 (SDM Vol. 4 "Model-Specific Registers", 0x3A and 0x480-0x493).
pub const fn is_vmx_capability_msr(msr: u32) -> bool {
    matches!(msr, msr::IA32_FEATURE_CONTROL | msr::IA32_VMX_BASIC..=msr::IA32_VMX_EXIT_CTLS2)
}

/// A required capability MSR could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct MissingMsr(pub u32);

impl fmt::Display for MissingMsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "required VMX capability MSR {:#x} could not be read", self.0)
    }
}

/// IA32_VMX_BASIC (SDM A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VmxBasic(pub u64);

impl VmxBasic {
    /// Bits 30:0: VMCS revision identifier.
    pub const fn revision_id(self) -> u32 {
        (self.0 & 0x7FFF_FFFF) as u32
    }
    /// Bits 44:32: bytes to allocate for VMXON and VMCS regions (at most 4096).
    pub const fn region_size(self) -> u32 {
        ((self.0 >> 32) & 0x1FFF) as u32
    }
    /// Bit 48: region addresses limited to 32 bits.
    pub const fn physical_address_width_32(self) -> bool {
        self.0 & (1 << 48) != 0
    }
    /// Bit 49: dual-monitor treatment of SMIs and SMM supported.
    pub const fn dual_monitor(self) -> bool {
        self.0 & (1 << 49) != 0
    }
    /// Bits 53:50: memory type for VMCS accesses (0 UC, 6 WB).
    pub const fn memory_type(self) -> u8 {
        ((self.0 >> 50) & 0xF) as u8
    }
    /// Bit 54: INS/OUTS exits report instruction information.
    pub const fn ins_outs_information(self) -> bool {
        self.0 & (1 << 54) != 0
    }
    /// Bit 55: the IA32_VMX_TRUE_* MSRs exist and govern the default1 controls.
    pub const fn true_controls(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// Bit 56: VM entry does not check the error-code/exception-vector consistency
    /// (SDM 26.2.1.3 relaxed).
    pub const fn no_error_code_consistency_check(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    /// Bit 58: nested-exception support (interruption-info bit 13; set wherever FRED is).
    pub const fn nested_exception(self) -> bool {
        self.0 & (1 << 58) != 0
    }
}

/// IA32_VMX_MISC (SDM A.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VmxMisc(pub u64);

impl VmxMisc {
    /// Bits 4:0: the VMX-preemption timer counts down when TSC bit X changes (X = this value).
    pub const fn preemption_timer_rate(self) -> u8 {
        (self.0 & 0x1F) as u8
    }
    /// Bit 5: VM exits store EFER.LMA into the "IA-32e mode guest" entry control.
    pub const fn stores_efer_lma(self) -> bool {
        self.0 & (1 << 5) != 0
    }
    /// Bit 6: activity state HLT supported.
    pub const fn activity_hlt(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    /// Bit 7: activity state shutdown supported.
    pub const fn activity_shutdown(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Bit 8: activity state wait-for-SIPI supported.
    pub const fn activity_wait_for_sipi(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// Bit 14: Intel PT usable in VMX operation.
    pub const fn processor_trace_in_vmx(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Bit 15: RDMSR of IA32_SMBASE allowed in SMM.
    pub const fn rdmsr_smbase_in_smm(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    /// Bits 24:16: number of CR3-target values.
    pub const fn cr3_target_count(self) -> u16 {
        ((self.0 >> 16) & 0x1FF) as u16
    }
    /// Bits 27:25: the recommended maximum of MSR-list entries is 512 × (N + 1).
    pub const fn max_msr_list_entries(self) -> u32 {
        512 * (((self.0 >> 25) & 7) as u32 + 1)
    }
    /// Bit 28: SMM monitor control bit 2 can block SMIs (VMXOFF unblocks them).
    pub const fn smm_vmxoff_blocks_smi(self) -> bool {
        self.0 & (1 << 28) != 0
    }
    /// Bit 29: VMWRITE may write VM-exit information fields.
    pub const fn vmwrite_any_field(self) -> bool {
        self.0 & (1 << 29) != 0
    }
    /// Bit 30: VM entry may inject software interrupts/exceptions with instruction length 0.
    pub const fn zero_length_injection(self) -> bool {
        self.0 & (1 << 30) != 0
    }
    /// Bits 63:32: MSEG revision identifier.
    pub const fn mseg_revision(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

bitflags::bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (SDM A.10). Unknown bits are kept with `from_bits_retain`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct EptVpidCapabilities: u64 {
        /// Bit 0: execute-only EPT translations.
        const EXECUTE_ONLY = 1 << 0;
        /// Bit 6: page-walk length 4.
        const PAGE_WALK_4 = 1 << 6;
        /// Bit 7: page-walk length 5.
        const PAGE_WALK_5 = 1 << 7;
        /// Bit 8: EPT paging structures may be uncacheable.
        const MEMORY_TYPE_UC = 1 << 8;
        /// Bit 14: EPT paging structures may be write-back.
        const MEMORY_TYPE_WB = 1 << 14;
        /// Bit 16: 2-MByte EPT pages.
        const PAGE_2M = 1 << 16;
        /// Bit 17: 1-GByte EPT pages.
        const PAGE_1G = 1 << 17;
        /// Bit 20: INVEPT supported.
        const INVEPT = 1 << 20;
        /// Bit 21: accessed and dirty flags for EPT.
        const ACCESSED_DIRTY = 1 << 21;
        /// Bit 22: advanced VM-exit information for EPT violations.
        const ADVANCED_EXIT_INFORMATION = 1 << 22;
        /// Bit 23: supervisor shadow-stack control.
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Bit 25: single-context INVEPT.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// Bit 26: all-context INVEPT.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// Bit 32: INVVPID supported.
        const INVVPID = 1 << 32;
        /// Bit 40: individual-address INVVPID.
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Bit 41: single-context INVVPID.
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// Bit 42: all-context INVVPID.
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Bit 43: single-context-retaining-globals INVVPID.
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for EptVpidCapabilities {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "EptVpidCapabilities({=u64:#x})", self.bits());
    }
}

/// IA32_FEATURE_CONTROL (MSR 0x3A).
///
/// ```
/// use hvkit_vmx_core::caps::{FeatureControl, VmxonReadiness};
///
/// // Firmware left the MSR unlocked: enable VMX outside SMX and lock it before VMXON.
/// let unlocked = FeatureControl(0);
/// assert_eq!(unlocked.vmxon_readiness(), VmxonReadiness::NeedsEnabling);
/// assert_eq!(unlocked.enabling_value(), 0b101); // lock (bit 0) | VMX outside SMX (bit 2)
/// assert_eq!(FeatureControl(0b101).vmxon_readiness(), VmxonReadiness::Ready);
/// // Locked with VMX off: VMXON would raise #GP; only the firmware can change it.
/// assert_eq!(FeatureControl(0b001).vmxon_readiness(), VmxonReadiness::DisabledByFirmware);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FeatureControl(pub u64);

impl FeatureControl {
    /// Bit 0: lock (no more writes until reset).
    pub const LOCK: u64 = 1 << 0;
    /// Bit 1: VMX inside SMX operation.
    pub const VMX_INSIDE_SMX: u64 = 1 << 1;
    /// Bit 2: VMX outside SMX operation.
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;

    /// Bit 0.
    pub const fn locked(self) -> bool {
        self.0 & Self::LOCK != 0
    }

    /// Bit 2: VMXON outside SMX is allowed.
    pub const fn vmx_outside_smx(self) -> bool {
        self.0 & Self::VMX_OUTSIDE_SMX != 0
    }

    /// What to do before VMXON outside SMX: nothing, write [`FeatureControl::enabling_value`]
    /// (unlocked), or give up (locked with VMX off: only a firmware setting changes it).
    pub const fn vmxon_readiness(self) -> VmxonReadiness {
        match (self.locked(), self.vmx_outside_smx()) {
            (true, true) => VmxonReadiness::Ready,
            (false, _) => VmxonReadiness::NeedsEnabling,
            (true, false) => VmxonReadiness::DisabledByFirmware,
        }
    }

    /// The value that enables VMX outside SMX and locks the MSR, keeping the other bits.
    pub const fn enabling_value(self) -> u64 {
        self.0 | Self::LOCK | Self::VMX_OUTSIDE_SMX
    }
}

/// See [`FeatureControl::vmxon_readiness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VmxonReadiness {
    /// Locked with VMX outside SMX enabled.
    Ready,
    /// Unlocked: write the enabling value first.
    NeedsEnabling,
    /// Locked with VMX outside SMX disabled: VMXON would raise #GP.
    DisabledByFirmware,
}

/// Which control register a fixed-bit check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ControlRegister {
    /// CR0.
    Cr0,
    /// CR4.
    Cr4,
}

/// A CR0/CR4 value that violates the VMX fixed bits (SDM A.7, A.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct FixedBitError {
    /// The register.
    pub register: ControlRegister,
    /// The offending bit.
    pub bit: u8,
    /// The value the bit must have.
    pub must_be: bool,
}

impl fmt::Display for FixedBitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let register = match self.register {
            ControlRegister::Cr0 => "CR0",
            ControlRegister::Cr4 => "CR4",
        };
        write!(
            f,
            "{register} bit {} must be {} in VMX operation (IA32_VMX_{register}_FIXED{}, SDM A.7/A.8)",
            self.bit,
            u8::from(self.must_be),
            if self.must_be { 0 } else { 1 }
        )
    }
}

/// The fixed bits of CR0 or CR4: bits set in `fixed0` must be 1, bits clear in `fixed1` must
/// be 0.
///
/// ```
/// use hvkit_vmx_core::caps::{ControlRegister, FixedBitError, FixedBits};
///
/// // IA32_VMX_CR4_FIXED0/1 as Bochs 2.7 corei7_skylake_x reports them: VMXE (bit 13) must be 1.
/// let cr4 = FixedBits { register: ControlRegister::Cr4, fixed0: 0x2000, fixed1: 0x0037_27FF };
/// let current = 0x0000_06F0; // PAE, PGE, OSFXSR ... without VMXE
/// assert!(cr4.check(current).is_err());
/// let for_vmxon = cr4.adjust(current);
/// assert_eq!(for_vmxon, 0x0000_26F0);
/// assert_eq!(cr4.check(for_vmxon), Ok(()));
/// // A bit the processor does not allow (bit 23 is 0 in FIXED1) is named.
/// let error = cr4.check(for_vmxon | 1 << 23).unwrap_err();
/// assert_eq!((error.bit, error.must_be), (23, false));
/// # let _: FixedBitError = error;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FixedBits {
    /// The register these bits are for.
    pub register: ControlRegister,
    /// IA32_VMX_CRx_FIXED0.
    pub fixed0: u64,
    /// IA32_VMX_CRx_FIXED1.
    pub fixed1: u64,
}

impl FixedBits {
    /// `value` with the must-be-1 bits set and the must-be-0 bits cleared.
    pub const fn adjust(self, value: u64) -> u64 {
        (value | self.fixed0) & self.fixed1
    }

    /// Checks `value`, naming the lowest offending bit.
    pub fn check(self, value: u64) -> Result<(), FixedBitError> {
        let missing = self.fixed0 & !value;
        if missing != 0 {
            let bit = missing.trailing_zeros() as u8;
            return Err(FixedBitError { register: self.register, bit, must_be: true });
        }
        let extra = value & !self.fixed1;
        if extra != 0 {
            let bit = extra.trailing_zeros() as u8;
            return Err(FixedBitError { register: self.register, bit, must_be: false });
        }
        Ok(())
    }
}

/// Everything the VMX capability MSRs say, read once.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCapabilities {
    /// IA32_VMX_BASIC.
    pub basic: VmxBasic,
    /// IA32_VMX_MISC.
    pub misc: VmxMisc,
    /// CR0 fixed bits.
    pub cr0: FixedBits,
    /// CR4 fixed bits.
    pub cr4: FixedBits,
    /// The pin-based MSR (TRUE variant when IA32_VMX_BASIC\[55\]).
    pin: u64,
    primary: u64,
    exit: u64,
    entry: u64,
    /// The non-true MSRs, for reference.
    pub default_pin: u64,
    /// Non-true IA32_VMX_PROCBASED_CTLS.
    pub default_primary: u64,
    /// Non-true IA32_VMX_EXIT_CTLS.
    pub default_exit: u64,
    /// Non-true IA32_VMX_ENTRY_CTLS.
    pub default_entry: u64,
    secondary: Option<u64>,
    tertiary: Option<u64>,
    secondary_exit: Option<u64>,
    /// IA32_VMX_EPT_VPID_CAP, present when EPT or VPID can be enabled.
    pub ept_vpid: Option<EptVpidCapabilities>,
    /// IA32_VMX_VMFUNC, present when VM functions can be enabled.
    pub vmfunc: Option<u64>,
    /// IA32_VMX_VMCS_ENUM, if readable.
    pub vmcs_enum: Option<u64>,
}

impl VmxCapabilities {
    /// Reads the capability MSRs, optional ones only where they exist.
    pub fn read(msrs: &impl CapabilityMsrs) -> Result<Self, MissingMsr> {
        let required = |number: u32| msrs.read_msr(number).ok_or(MissingMsr(number));
        let basic = VmxBasic(required(msr::IA32_VMX_BASIC)?);
        let default_pin = required(msr::IA32_VMX_PINBASED_CTLS)?;
        let default_primary = required(msr::IA32_VMX_PROCBASED_CTLS)?;
        let default_exit = required(msr::IA32_VMX_EXIT_CTLS)?;
        let default_entry = required(msr::IA32_VMX_ENTRY_CTLS)?;
        let (pin, primary, exit, entry) = if basic.true_controls() {
            (
                required(msr::IA32_VMX_TRUE_PINBASED_CTLS)?,
                required(msr::IA32_VMX_TRUE_PROCBASED_CTLS)?,
                required(msr::IA32_VMX_TRUE_EXIT_CTLS)?,
                required(msr::IA32_VMX_TRUE_ENTRY_CTLS)?,
            )
        } else {
            (default_pin, default_primary, default_exit, default_entry)
        };
        let allowed1 = |value: u64, bit: u32| (value >> 32) & (1 << bit) != 0;
        let secondary =
            if allowed1(primary, 31) { msrs.read_msr(msr::IA32_VMX_PROCBASED_CTLS2) } else { None };
        let tertiary =
            if allowed1(primary, 17) { msrs.read_msr(msr::IA32_VMX_PROCBASED_CTLS3) } else { None };
        let secondary_exit =
            if allowed1(exit, 31) { msrs.read_msr(msr::IA32_VMX_EXIT_CTLS2) } else { None };
        let ept_vpid = match secondary {
            Some(value) if allowed1(value, 1) || allowed1(value, 5) => {
                msrs.read_msr(msr::IA32_VMX_EPT_VPID_CAP).map(EptVpidCapabilities::from_bits_retain)
            }
            _ => None,
        };
        let vmfunc = match secondary {
            Some(value) if allowed1(value, 13) => msrs.read_msr(msr::IA32_VMX_VMFUNC),
            _ => None,
        };
        Ok(Self {
            basic,
            misc: VmxMisc(required(msr::IA32_VMX_MISC)?),
            cr0: FixedBits {
                register: ControlRegister::Cr0,
                fixed0: required(msr::IA32_VMX_CR0_FIXED0)?,
                fixed1: required(msr::IA32_VMX_CR0_FIXED1)?,
            },
            cr4: FixedBits {
                register: ControlRegister::Cr4,
                fixed0: required(msr::IA32_VMX_CR4_FIXED0)?,
                fixed1: required(msr::IA32_VMX_CR4_FIXED1)?,
            },
            pin,
            primary,
            exit,
            entry,
            default_pin,
            default_primary,
            default_exit,
            default_entry,
            secondary,
            tertiary,
            secondary_exit,
            ept_vpid,
            vmfunc,
            vmcs_enum: msrs.read_msr(msr::IA32_VMX_VMCS_ENUM),
        })
    }

    /// Allowed pin-based controls (TRUE MSR when IA32_VMX_BASIC\[55\]).
    pub const fn pin_controls(&self) -> AllowedControls {
        AllowedControls::from_msr(self.pin)
    }
    /// Allowed primary processor-based controls.
    pub const fn primary_controls(&self) -> AllowedControls {
        AllowedControls::from_msr(self.primary)
    }
    /// Allowed secondary processor-based controls, if the MSR exists.
    pub const fn secondary_controls(&self) -> Option<AllowedControls> {
        match self.secondary {
            Some(value) => Some(AllowedControls::from_msr(value)),
            None => None,
        }
    }
    /// Allowed-1 tertiary controls, if the MSR exists.
    pub const fn tertiary_controls(&self) -> Option<u64> {
        self.tertiary
    }
    /// Allowed primary VM-exit controls.
    pub const fn exit_controls(&self) -> AllowedControls {
        AllowedControls::from_msr(self.exit)
    }
    /// Allowed-1 secondary VM-exit controls, if the MSR exists.
    pub const fn secondary_exit_controls(&self) -> Option<u64> {
        self.secondary_exit
    }
    /// Allowed VM-entry controls.
    pub const fn entry_controls(&self) -> AllowedControls {
        AllowedControls::from_msr(self.entry)
    }

    /// Which VMCS FRED-state controls the processor offers.
    pub const fn fred_controls(&self) -> FredControlSupport {
        let secondary_exit = match self.secondary_exit {
            Some(allowed) => allowed,
            None => 0,
        };
        FredControlSupport {
            // Const context: the allowed-1 bits directly (`allows` is a trait-generic method).
            load_guest_on_entry: self.entry_controls().may_be_one & EntryControls::LOAD_FRED.bits()
                != 0,
            secondary_exit_controls: self.exit_controls().may_be_one
                & ExitControls::ACTIVATE_SECONDARY_CONTROLS.bits()
                != 0
                && self.secondary_exit.is_some(),
            save_guest_on_exit: secondary_exit & 1 != 0,
            load_host_on_exit: secondary_exit & 2 != 0,
        }
    }
}

/// The VMCS FRED-state controls a processor offers (SDM Vol. 3D A.4.2 and A.5): what
/// [`ControlRequest::with_fred_state`](crate::controls::ControlRequest::with_fred_state)
/// needs. Without them, the host's FRED MSRs survive a guest only if the guest cannot write
/// them (intercept 0x1CC-0x1D4 in the MSR bitmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FredControlSupport {
    /// VM-entry control bit 23 "load FRED" may be 1.
    pub load_guest_on_entry: bool,
    /// Primary VM-exit control bit 31 "activate secondary controls" may be 1 and
    /// IA32_VMX_EXIT_CTLS2 (0x493) was read.
    pub secondary_exit_controls: bool,
    /// Secondary VM-exit control bit 0 "save FRED" may be 1.
    pub save_guest_on_exit: bool,
    /// Secondary VM-exit control bit 1 "load FRED" may be 1.
    pub load_host_on_exit: bool,
}

impl FredControlSupport {
    /// Every control needed to switch FRED state at entry and exit is offered.
    pub const fn complete(&self) -> bool {
        self.load_guest_on_entry
            && self.secondary_exit_controls
            && self.save_guest_on_exit
            && self.load_host_on_exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_reads_only_feature_control_and_vmx_capability_msrs() {
        for number in [0x3A, 0x480, 0x485, 0x48B, 0x490, 0x493] {
            assert!(is_vmx_capability_msr(number), "{number:#x}");
        }
        // Neighbours of the range and MSRs a safe caller must not reach.
        for number in [0x39, 0x3B, 0x47F, 0x494, 0x1B, 0xC000_0082, 0xC000_0080, 0x6E0] {
            assert!(!is_vmx_capability_msr(number), "{number:#x}");
        }
    }

    #[test]
    fn basic_fields_from_recorded_values() {
        let skylake = VmxBasic(0x00D8_1000_0000_002B);
        assert_eq!(skylake.revision_id(), 0x2B);
        assert_eq!(skylake.region_size(), 0x1000);
        assert_eq!(skylake.memory_type(), 6, "write-back");
        assert!(skylake.ins_outs_information());
        assert!(skylake.true_controls());
        assert!(!skylake.no_error_code_consistency_check());
        assert!(!skylake.nested_exception());
        assert!(!skylake.physical_address_width_32() && !skylake.dual_monitor());
        let wildcat = VmxBasic(0x04D8_1000_0000_0004);
        assert_eq!(wildcat.revision_id(), 4);
        assert!(wildcat.nested_exception(), "bit 58 set where FRED is");
        assert!(VmxBasic(1 << 56).no_error_code_consistency_check());
        assert!(VmxBasic(1 << 48).physical_address_width_32());
        assert!(VmxBasic(1 << 49).dual_monitor());
        assert_eq!(VmxBasic(0x8000_0000).revision_id(), 0, "bit 31 is not part of the id");
    }

    #[test]
    fn misc_fields() {
        let misc = VmxMisc(0x0000_0000_6004_01E0);
        assert_eq!(misc.preemption_timer_rate(), 0);
        assert!(misc.stores_efer_lma());
        assert!(misc.activity_hlt() && misc.activity_shutdown() && misc.activity_wait_for_sipi());
        assert_eq!(misc.cr3_target_count(), 4);
        assert_eq!(misc.max_msr_list_entries(), 512);
        assert!(misc.vmwrite_any_field());
        assert!(misc.zero_length_injection());
        assert!(!misc.smm_vmxoff_blocks_smi());
        let misc = VmxMisc(0x1234_5678_0E00_001F);
        assert_eq!(misc.preemption_timer_rate(), 31);
        assert_eq!(misc.max_msr_list_entries(), 512 * 8);
        assert_eq!(misc.mseg_revision(), 0x1234_5678);
    }

    #[test]
    fn optional_msrs_are_read_only_where_they_exist() {
        struct Strict;
        impl CapabilityMsrs for Strict {
            fn read_msr(&self, msr: u32) -> Option<u64> {
                match msr {
                    msr::IA32_VMX_BASIC => Some(0x0000_1000_0000_0001), // no true controls
                    // Allowed-1 bits 31 and 17 clear: no secondary, no tertiary controls.
                    msr::IA32_VMX_PROCBASED_CTLS => Some(0x7FFD_FFFF_0401_E172),
                    msr::IA32_VMX_PINBASED_CTLS
                    | msr::IA32_VMX_EXIT_CTLS
                    | msr::IA32_VMX_ENTRY_CTLS
                    | msr::IA32_VMX_MISC
                    | msr::IA32_VMX_CR0_FIXED0
                    | msr::IA32_VMX_CR0_FIXED1
                    | msr::IA32_VMX_CR4_FIXED0
                    | msr::IA32_VMX_CR4_FIXED1
                    | msr::IA32_VMX_VMCS_ENUM => Some(0),
                    other => panic!("read of MSR {other:#x}, which does not exist here"),
                }
            }
        }
        let caps = VmxCapabilities::read(&Strict).unwrap();
        assert_eq!(caps.secondary_controls(), None);
        assert_eq!(caps.ept_vpid, None);
        assert_eq!(caps.primary_controls().must_be_one, 0x0401_E172, "non-true MSR used");
    }

    #[test]
    fn required_msr_missing_is_an_error() {
        let msrs = RecordedMsrs(&[(msr::IA32_VMX_BASIC, 0)]);
        assert_eq!(VmxCapabilities::read(&msrs), Err(MissingMsr(msr::IA32_VMX_PINBASED_CTLS)));
    }

    #[test]
    fn fixed_bits_adjust_and_name_the_bit() {
        // Bochs skylake: CR0 fixed0 0x80000021 (PG, NE, PE), CR4 fixed0 0x2000 (VMXE).
        let cr0 =
            FixedBits { register: ControlRegister::Cr0, fixed0: 0x8000_0021, fixed1: 0xFFFF_FFFF };
        assert_eq!(cr0.adjust(0x1), 0x8000_0021);
        assert_eq!(
            cr0.check(0x8000_0001),
            Err(FixedBitError { register: ControlRegister::Cr0, bit: 5, must_be: true })
        );
        assert_eq!(
            cr0.check(0x1_8000_0021),
            Err(FixedBitError { register: ControlRegister::Cr0, bit: 32, must_be: false })
        );
        let cr4 = FixedBits { register: ControlRegister::Cr4, fixed0: 0x2000, fixed1: 0x0037_27FF };
        assert_eq!(cr4.check(0x2020), Ok(()));
        // CR4.FRED (bit 32) is not allowed by Bochs 2.7 skylake, but is by wildcat_lake.
        assert_eq!(cr4.check(0x1_0000_2020).map_err(|e| e.bit), Err(32));
        let wildcat =
            FixedBits { register: ControlRegister::Cr4, fixed0: 0x2000, fixed1: 0x1_0837_2FFF };
        assert_eq!(wildcat.check(0x1_0000_2020), Ok(()));
        let text = std::format!("{}", cr0.check(0).unwrap_err());
        assert!(text.starts_with("CR0 bit 0 must be 1"), "{text}");
    }

    #[test]
    fn feature_control_readiness() {
        assert_eq!(FeatureControl(0x5).vmxon_readiness(), VmxonReadiness::Ready);
        assert_eq!(FeatureControl(0x0).vmxon_readiness(), VmxonReadiness::NeedsEnabling);
        assert_eq!(FeatureControl(0x1).vmxon_readiness(), VmxonReadiness::DisabledByFirmware);
        assert_eq!(FeatureControl(0x100).enabling_value(), 0x105);
    }

    #[test]
    fn ept_vpid_bits() {
        assert_eq!(EptVpidCapabilities::PAGE_WALK_4.bits(), 1 << 6);
        assert_eq!(EptVpidCapabilities::MEMORY_TYPE_WB.bits(), 1 << 14);
        assert_eq!(EptVpidCapabilities::PAGE_2M.bits(), 1 << 16);
        assert_eq!(EptVpidCapabilities::INVEPT_SINGLE_CONTEXT.bits(), 1 << 25);
        assert_eq!(EptVpidCapabilities::INVVPID.bits(), 1 << 32);
        assert_eq!(EptVpidCapabilities::from_bits_retain(1 << 63).bits(), 1 << 63);
    }
}
