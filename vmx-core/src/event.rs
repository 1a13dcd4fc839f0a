//! Events: interruption information, event types, guest interruptibility and activity state,
//! pending debug exceptions (SDM Vol. 3C "VM-Entry Controls for Event Injection", "Information
//! for VM Exits Due to Vectored Events", "Guest Non-Register State").
#![forbid(unsafe_code)]

use core::fmt;

/// The type field (bits 10:8) of an interruption-information field; the same numbers serve
/// FRED event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InterruptionType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 1: reserved (kept so a decoded value is never lost).
    Reserved,
    /// 2: non-maskable interrupt.
    Nmi,
    /// 3: hardware exception (including #DF and #MC).
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event (vector 0: pending MTF VM exit; with FRED also SYSCALL 1, SYSENTER 2).
    Other,
}

impl InterruptionType {
    /// Decodes the 3-bit type (bits above 2 are ignored).
    pub const fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => Self::ExternalInterrupt,
            1 => Self::Reserved,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => Self::Other,
        }
    }

    /// The 3-bit type.
    pub const fn bits(self) -> u32 {
        match self {
            Self::ExternalInterrupt => 0,
            Self::Reserved => 1,
            Self::Nmi => 2,
            Self::HardwareException => 3,
            Self::SoftwareInterrupt => 4,
            Self::PrivilegedSoftwareException => 5,
            Self::SoftwareException => 6,
            Self::Other => 7,
        }
    }

    /// `true` for the types whose injection uses the VM-entry instruction length (4, 5, 6).
    pub const fn uses_instruction_length(self) -> bool {
        matches!(
            self,
            Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException
        )
    }
}

/// Exception vectors (SDM Vol. 3A "Exception and Interrupt Reference").
pub mod vector {
    /// #DE divide error.
    pub const DIVIDE_ERROR: u8 = 0;
    /// #DB debug.
    pub const DEBUG: u8 = 1;
    /// NMI.
    pub const NMI: u8 = 2;
    /// #BP breakpoint.
    pub const BREAKPOINT: u8 = 3;
    /// #OF overflow.
    pub const OVERFLOW: u8 = 4;
    /// #BR BOUND range exceeded.
    pub const BOUND_RANGE: u8 = 5;
    /// #UD invalid opcode.
    pub const INVALID_OPCODE: u8 = 6;
    /// #NM device not available.
    pub const DEVICE_NOT_AVAILABLE: u8 = 7;
    /// #DF double fault.
    pub const DOUBLE_FAULT: u8 = 8;
    /// #TS invalid TSS.
    pub const INVALID_TSS: u8 = 10;
    /// #NP segment not present.
    pub const SEGMENT_NOT_PRESENT: u8 = 11;
    /// #SS stack-segment fault.
    pub const STACK_FAULT: u8 = 12;
    /// #GP general protection.
    pub const GENERAL_PROTECTION: u8 = 13;
    /// #PF page fault.
    pub const PAGE_FAULT: u8 = 14;
    /// #MF x87 floating-point error.
    pub const X87_FLOATING_POINT: u8 = 16;
    /// #AC alignment check.
    pub const ALIGNMENT_CHECK: u8 = 17;
    /// #MC machine check.
    pub const MACHINE_CHECK: u8 = 18;
    /// #XM SIMD floating-point exception.
    pub const SIMD_FLOATING_POINT: u8 = 19;
    /// #VE virtualization exception.
    pub const VIRTUALIZATION: u8 = 20;
    /// #CP control-protection exception.
    pub const CONTROL_PROTECTION: u8 = 21;

    /// The exceptions that push an error code in protected mode: #DF, #TS, #NP, #SS, #GP, #PF,
    /// #AC (and #CP, which VM entry does not treat as such: SDM 26.2.1.3 lists only these seven).
    pub const fn has_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17)
    }
}

/// An interruption-information field: VM-entry interruption information, VM-exit interruption
/// information or IDT-vectoring information.
///
/// Bits: 7:0 vector, 10:8 type, 11 error code valid / deliver error code, 12 NMI unblocking
/// due to IRET (exit information only), 13 nested exception (FRED, type 3 only), 30:14
/// reserved, 31 valid. Decoding keeps every bit, including reserved ones.
///
/// ```
/// use hvkit_vmx_core::event::{InterruptionInfo, InterruptionInfoError, InterruptionType};
///
/// // A #GP (hardware exception 13) with an error code, as VM-entry interruption information.
/// let gp = InterruptionInfo::try_new(InterruptionType::HardwareException, 13)?.with_error_code(true);
/// assert_eq!(gp.raw(), 0x8000_0B0D);
/// // Decoding an exit's field: any value, reserved bits kept.
/// let exit = InterruptionInfo::from_raw(0x8000_0202);
/// assert!(exit.is_valid() && exit.is_nmi() && exit.vector() == 2);
/// // Combinations no field may hold are refused.
/// assert_eq!(
///     InterruptionInfo::try_new(InterruptionType::Nmi, 3),
///     Err(InterruptionInfoError::NmiVectorNot2 { vector: 3 })
/// );
/// # Ok::<(), InterruptionInfoError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct InterruptionInfo(u32);

/// Why [`InterruptionInfo::try_new`] refused a combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum InterruptionInfoError {
    /// Type 1 is reserved.
    ReservedType,
    /// An NMI must use vector 2.
    NmiVectorNot2 {
        /// The vector given.
        vector: u8,
    },
    /// Hardware exceptions use vectors 0-31.
    ExceptionVectorAbove31 {
        /// The vector given.
        vector: u8,
    },
}

impl fmt::Display for InterruptionInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedType => f.write_str("interruption type 1 is reserved (SDM 26.2.1.3)"),
            Self::NmiVectorNot2 { vector } => {
                write!(f, "NMI (type 2) with vector {vector}: must be 2 (SDM 26.2.1.3)")
            }
            Self::ExceptionVectorAbove31 { vector } => {
                write!(
                    f,
                    "hardware exception (type 3) with vector {vector}: must be <= 31 (SDM 26.2.1.3)"
                )
            }
        }
    }
}

impl InterruptionInfo {
    /// Bit 11: error code valid (exit) / deliver error code (entry).
    pub const ERROR_CODE: u32 = 1 << 11;
    /// Bit 12: NMI unblocking due to IRET (exit interruption information).
    pub const NMI_UNBLOCKING_DUE_TO_IRET: u32 = 1 << 12;
    /// Bit 13: nested exception (FRED; type 3 only).
    pub const NESTED_EXCEPTION: u32 = 1 << 13;
    /// Bit 31: valid.
    pub const VALID: u32 = 1 << 31;
    /// Bits 30:14, reserved in every interruption-information field.
    pub const RESERVED: u32 = 0x7FFF_C000;

    /// A valid event of `event_type` and `vector`, without error code. Fails for combinations
    /// that no interruption-information field may hold (reserved type, NMI not vector 2,
    /// exception vector above 31).
    pub const fn try_new(
        event_type: InterruptionType,
        vector: u8,
    ) -> Result<Self, InterruptionInfoError> {
        match event_type {
            InterruptionType::Reserved => return Err(InterruptionInfoError::ReservedType),
            InterruptionType::Nmi if vector != 2 => {
                return Err(InterruptionInfoError::NmiVectorNot2 { vector });
            }
            InterruptionType::HardwareException if vector > 31 => {
                return Err(InterruptionInfoError::ExceptionVectorAbove31 { vector });
            }
            _ => {}
        }
        Ok(Self(Self::VALID | (event_type.bits() << 8) | vector as u32))
    }

    /// A valid NMI (type 2, vector 2).
    pub const fn nmi() -> Self {
        Self(Self::VALID | (2 << 8) | 2)
    }

    /// A valid external interrupt with `vector`.
    pub const fn external_interrupt(vector: u8) -> Self {
        Self(Self::VALID | vector as u32)
    }

    /// A valid hardware exception; `vector` is taken modulo 32 so the value is always valid.
    /// Use [`InterruptionInfo::try_new`] to have an out-of-range vector reported instead.
    pub const fn hardware_exception(vector: u8) -> Self {
        Self(Self::VALID | (3 << 8) | (vector & 31) as u32)
    }

    /// Any 32 bits, as read from the VMCS.
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// The raw 32 bits.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Bits 7:0.
    pub const fn vector(self) -> u8 {
        (self.0 & 0xFF) as u8
    }

    /// Bits 10:8.
    pub const fn event_type(self) -> InterruptionType {
        InterruptionType::from_bits(self.0 >> 8)
    }

    /// Bit 11.
    pub const fn error_code_valid(self) -> bool {
        self.0 & Self::ERROR_CODE != 0
    }

    /// Bit 12.
    pub const fn nmi_unblocking_due_to_iret(self) -> bool {
        self.0 & Self::NMI_UNBLOCKING_DUE_TO_IRET != 0
    }

    /// Bit 13.
    pub const fn nested_exception(self) -> bool {
        self.0 & Self::NESTED_EXCEPTION != 0
    }

    /// Bit 31.
    pub const fn is_valid(self) -> bool {
        self.0 & Self::VALID != 0
    }

    /// Bits 30:14 as found.
    pub const fn reserved_bits(self) -> u32 {
        self.0 & Self::RESERVED
    }

    /// `true` for a valid NMI (type 2).
    pub const fn is_nmi(self) -> bool {
        self.is_valid() && matches!(self.event_type(), InterruptionType::Nmi)
    }

    /// With bit 11 set or cleared.
    pub const fn with_error_code(self, on: bool) -> Self {
        Self(if on { self.0 | Self::ERROR_CODE } else { self.0 & !Self::ERROR_CODE })
    }

    /// With bit 12 set or cleared.
    pub const fn with_nmi_unblocking_due_to_iret(self, on: bool) -> Self {
        let bit = Self::NMI_UNBLOCKING_DUE_TO_IRET;
        Self(if on { self.0 | bit } else { self.0 & !bit })
    }

    /// With bit 13 set or cleared.
    pub const fn with_nested_exception(self, on: bool) -> Self {
        let bit = Self::NESTED_EXCEPTION;
        Self(if on { self.0 | bit } else { self.0 & !bit })
    }

    /// With bit 31 set or cleared.
    pub const fn with_valid(self, on: bool) -> Self {
        Self(if on { self.0 | Self::VALID } else { self.0 & !Self::VALID })
    }
}

impl fmt::Debug for InterruptionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterruptionInfo")
            .field("raw", &format_args!("{:#010x}", self.0))
            .field("valid", &self.is_valid())
            .field("type", &self.event_type())
            .field("vector", &self.vector())
            .field("error_code", &self.error_code_valid())
            .finish()
    }
}

bitflags::bitflags! {
    /// Guest interruptibility state (field 0x4824). Bits 31:5 are reserved and kept when
    /// decoded with `from_bits_retain`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct GuestInterruptibility: u32 {
        /// Bit 0: blocking by STI.
        const STI = 1 << 0;
        /// Bit 1: blocking by MOV SS (or POP SS).
        const MOV_SS = 1 << 1;
        /// Bit 2: blocking by SMI.
        const SMI = 1 << 2;
        /// Bit 3: blocking by NMI.
        const NMI = 1 << 3;
        /// Bit 4: enclave interruption.
        const ENCLAVE_INTERRUPTION = 1 << 4;
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for GuestInterruptibility {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "GuestInterruptibility({=u32:#x})", self.bits());
    }
}

/// Guest activity state (field 0x4826).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ActivityState {
    /// 0: active.
    Active,
    /// 1: HLT.
    Hlt,
    /// 2: shutdown.
    Shutdown,
    /// 3: wait-for-SIPI.
    WaitForSipi,
    /// Any other value (kept).
    Unknown(u32),
}

impl ActivityState {
    /// Decodes the field.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Active,
            1 => Self::Hlt,
            2 => Self::Shutdown,
            3 => Self::WaitForSipi,
            other => Self::Unknown(other),
        }
    }

    /// The field value.
    pub const fn raw(self) -> u32 {
        match self {
            Self::Active => 0,
            Self::Hlt => 1,
            Self::Shutdown => 2,
            Self::WaitForSipi => 3,
            Self::Unknown(other) => other,
        }
    }
}

bitflags::bitflags! {
    /// Guest pending debug exceptions (field 0x6822). Other bits are kept with
    /// `from_bits_retain`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[repr(transparent)]
    pub struct PendingDebugExceptions: u64 {
        /// Bit 0: B0.
        const B0 = 1 << 0;
        /// Bit 1: B1.
        const B1 = 1 << 1;
        /// Bit 2: B2.
        const B2 = 1 << 2;
        /// Bit 3: B3.
        const B3 = 1 << 3;
        /// Bit 12: enabled breakpoint.
        const ENABLED_BREAKPOINT = 1 << 12;
        /// Bit 14: BS (single step).
        const BS = 1 << 14;
        /// Bit 16: RTM.
        const RTM = 1 << 16;
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for PendingDebugExceptions {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "PendingDebugExceptions({=u64:#x})", self.bits());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_sits_on_its_sdm_bits() {
        assert_eq!(
            InterruptionInfo::nmi().raw(),
            0x8000_0202,
            "NMI exit information as recorded from Bochs 2.7"
        );
        assert_eq!(InterruptionInfo::external_interrupt(0x30).raw(), 0x8000_0030);
        assert_eq!(InterruptionInfo::hardware_exception(14).raw(), 0x8000_030E);
        let zero = InterruptionInfo::from_raw(0);
        assert_eq!(zero.with_error_code(true).raw(), 1 << 11);
        assert_eq!(zero.with_nmi_unblocking_due_to_iret(true).raw(), 1 << 12);
        assert_eq!(zero.with_nested_exception(true).raw(), 1 << 13);
        assert_eq!(zero.with_valid(true).raw(), 1 << 31);
        for bits in 0..8 {
            let info = InterruptionInfo::from_raw(bits << 8);
            assert_eq!(info.event_type().bits(), bits);
            assert_eq!(InterruptionType::from_bits(bits).bits(), bits);
        }
        let info = InterruptionInfo::from_raw(0xFFFF_FFFF);
        assert_eq!(info.vector(), 0xFF);
        assert_eq!(info.event_type(), InterruptionType::Other);
        assert!(info.error_code_valid() && info.nmi_unblocking_due_to_iret());
        assert!(info.nested_exception() && info.is_valid());
        assert_eq!(info.reserved_bits(), 0x7FFF_C000);
        assert_eq!(info.with_valid(false).raw(), 0x7FFF_FFFF, "reserved bits kept");
    }

    #[test]
    fn constructor_ladder_checks_combinations() {
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::Nmi, 2),
            Ok(InterruptionInfo::nmi())
        );
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::Nmi, 3),
            Err(InterruptionInfoError::NmiVectorNot2 { vector: 3 })
        );
        assert!(InterruptionInfo::try_new(InterruptionType::HardwareException, 31).is_ok());
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::HardwareException, 32),
            Err(InterruptionInfoError::ExceptionVectorAbove31 { vector: 32 })
        );
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::Reserved, 0),
            Err(InterruptionInfoError::ReservedType)
        );
        assert_eq!(InterruptionInfo::hardware_exception(33).vector(), 1);
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::SoftwareInterrupt, 0x80).map(|i| i.raw()),
            Ok(0x8000_0480)
        );
    }

    const ALL_TYPES: [InterruptionType; 8] = [
        InterruptionType::ExternalInterrupt,
        InterruptionType::Reserved,
        InterruptionType::Nmi,
        InterruptionType::HardwareException,
        InterruptionType::SoftwareInterrupt,
        InterruptionType::PrivilegedSoftwareException,
        InterruptionType::SoftwareException,
        InterruptionType::Other,
    ];

    #[test]
    fn event_type_numbers_follow_the_sdm_table() {
        for (number, event_type) in (0u32..).zip(ALL_TYPES) {
            assert_eq!(InterruptionType::from_bits(number), event_type);
            assert_eq!(event_type.bits(), number);
            // Bits above the 3-bit field are ignored.
            assert_eq!(InterruptionType::from_bits(number | 0xFFFF_FFF8), event_type);
        }
    }

    #[test]
    fn instruction_length_only_for_software_events() {
        // SDM 26.2.1.3: the VM-entry instruction length is checked for types 4, 5 and 6.
        for event_type in ALL_TYPES {
            let expected = matches!(event_type.bits(), 4..=6);
            assert_eq!(event_type.uses_instruction_length(), expected, "{event_type:?}");
        }
    }

    #[test]
    fn error_code_vectors_are_exactly_the_seven() {
        for vector in 0..=255u8 {
            let expected = [8, 10, 11, 12, 13, 14, 17].contains(&vector);
            assert_eq!(vector::has_error_code(vector), expected, "vector {vector}");
        }
    }

    #[test]
    fn try_new_boundaries_per_type() {
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::HardwareException, 0)
                .map(InterruptionInfo::raw),
            Ok(0x8000_0300)
        );
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::HardwareException, 31)
                .map(InterruptionInfo::raw),
            Ok(0x8000_031F)
        );
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::HardwareException, 255),
            Err(InterruptionInfoError::ExceptionVectorAbove31 { vector: 255 })
        );
        // Only hardware exceptions are limited to 0-31; only NMIs to vector 2.
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::ExternalInterrupt, 32)
                .map(InterruptionInfo::raw),
            Ok(0x8000_0020)
        );
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::SoftwareException, 3)
                .map(InterruptionInfo::raw),
            Ok(0x8000_0603)
        );
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::Other, 0).map(InterruptionInfo::raw),
            Ok(0x8000_0700)
        );
        assert_eq!(
            InterruptionInfo::try_new(InterruptionType::Nmi, 1),
            Err(InterruptionInfoError::NmiVectorNot2 { vector: 1 })
        );
        for vector in [0, 2, 255] {
            assert_eq!(
                InterruptionInfo::try_new(InterruptionType::Reserved, vector),
                Err(InterruptionInfoError::ReservedType)
            );
        }
    }

    #[test]
    fn constructors_keep_the_whole_vector() {
        assert_eq!(InterruptionInfo::external_interrupt(0xFF).raw(), 0x8000_00FF);
        assert_eq!(InterruptionInfo::external_interrupt(0x30).vector(), 0x30);
        assert_eq!(InterruptionInfo::from_raw(0x8000_0330).vector(), 0x30);
        assert_eq!(InterruptionInfo::hardware_exception(31).raw(), 0x8000_031F);
        assert_eq!(InterruptionInfo::hardware_exception(32).raw(), 0x8000_0300);
        assert_eq!(InterruptionInfo::hardware_exception(0).raw(), 0x8000_0300);
        assert_eq!(InterruptionInfo::nmi().vector(), 2);
        assert_eq!(InterruptionInfo::nmi().event_type(), InterruptionType::Nmi);
        assert_eq!(
            InterruptionInfo::from_raw(0x8000_0B0E).event_type(),
            InterruptionType::HardwareException
        );
    }

    #[test]
    fn each_flag_getter_set_and_clear() {
        type Getter = fn(InterruptionInfo) -> bool;
        let flags: [(u32, Getter); 4] = [
            (11, InterruptionInfo::error_code_valid),
            (12, InterruptionInfo::nmi_unblocking_due_to_iret),
            (13, InterruptionInfo::nested_exception),
            (31, InterruptionInfo::is_valid),
        ];
        for (bit, getter) in flags {
            assert!(getter(InterruptionInfo::from_raw(1 << bit)), "bit {bit} alone");
            assert!(!getter(InterruptionInfo::from_raw(0)), "bit {bit} from zero");
            assert!(!getter(InterruptionInfo::from_raw(!(1 << bit))), "bit {bit} clear, rest set");
            assert!(getter(InterruptionInfo::from_raw(u32::MAX)), "bit {bit} in all-ones");
        }
        assert_eq!(InterruptionInfo::from_raw(0x8000_3FFF).reserved_bits(), 0);
        assert_eq!(InterruptionInfo::from_raw(1 << 14).reserved_bits(), 1 << 14);
        assert_eq!(InterruptionInfo::from_raw(1 << 30).reserved_bits(), 1 << 30);
    }

    #[test]
    fn each_setter_from_zero_all_ones_and_with_the_bit_already_there() {
        type Setter = fn(InterruptionInfo, bool) -> InterruptionInfo;
        let setters: [(u32, Setter); 4] = [
            (11, InterruptionInfo::with_error_code),
            (12, InterruptionInfo::with_nmi_unblocking_due_to_iret),
            (13, InterruptionInfo::with_nested_exception),
            (31, InterruptionInfo::with_valid),
        ];
        for (bit, setter) in setters {
            let mask = 1u32 << bit;
            for start in [0, u32::MAX, mask, 0x8000_0B0E, 0x1234_5678] {
                let info = InterruptionInfo::from_raw(start);
                assert_eq!(setter(info, true).raw(), start | mask, "bit {bit} on {start:#x}");
                assert_eq!(setter(info, false).raw(), start & !mask, "bit {bit} off {start:#x}");
            }
        }
    }

    #[test]
    fn is_nmi_needs_valid_and_type_2() {
        assert!(InterruptionInfo::nmi().is_nmi());
        assert!(!InterruptionInfo::nmi().with_valid(false).is_nmi(), "type 2 but not valid");
        assert!(!InterruptionInfo::external_interrupt(2).is_nmi(), "valid but type 0");
        assert!(!InterruptionInfo::hardware_exception(2).is_nmi());
        assert!(!InterruptionInfo::from_raw(0).is_nmi());
    }

    #[test]
    fn debug_shows_the_decoded_fields() {
        let text =
            std::format!("{:?}", InterruptionInfo::hardware_exception(14).with_error_code(true));
        assert_eq!(
            text,
            "InterruptionInfo { raw: 0x80000b0e, valid: true, type: HardwareException, \
             vector: 14, error_code: true }"
        );
        let text = std::format!("{:?}", InterruptionInfo::from_raw(0x0000_0202));
        assert_eq!(
            text,
            "InterruptionInfo { raw: 0x00000202, valid: false, type: Nmi, vector: 2, \
             error_code: false }"
        );
    }

    #[test]
    fn errors_name_the_rule() {
        assert_eq!(
            std::format!("{}", InterruptionInfoError::ReservedType),
            "interruption type 1 is reserved (SDM 26.2.1.3)"
        );
        assert_eq!(
            std::format!("{}", InterruptionInfoError::NmiVectorNot2 { vector: 3 }),
            "NMI (type 2) with vector 3: must be 2 (SDM 26.2.1.3)"
        );
        assert_eq!(
            std::format!("{}", InterruptionInfoError::ExceptionVectorAbove31 { vector: 32 }),
            "hardware exception (type 3) with vector 32: must be <= 31 (SDM 26.2.1.3)"
        );
    }

    #[test]
    fn activity_states_decode_to_their_names() {
        let states = [
            (0, ActivityState::Active),
            (1, ActivityState::Hlt),
            (2, ActivityState::Shutdown),
            (3, ActivityState::WaitForSipi),
            (4, ActivityState::Unknown(4)),
            (u32::MAX, ActivityState::Unknown(u32::MAX)),
        ];
        for (raw, state) in states {
            assert_eq!(ActivityState::from_raw(raw), state);
            assert_eq!(state.raw(), raw);
        }
    }

    #[test]
    fn interruptibility_activity_and_debug_bits() {
        assert_eq!(GuestInterruptibility::STI.bits(), 1);
        assert_eq!(GuestInterruptibility::MOV_SS.bits(), 2);
        assert_eq!(GuestInterruptibility::SMI.bits(), 4);
        assert_eq!(GuestInterruptibility::NMI.bits(), 8);
        assert_eq!(GuestInterruptibility::ENCLAVE_INTERRUPTION.bits(), 16);
        assert_eq!(GuestInterruptibility::from_bits_retain(0x8000_0008).bits(), 0x8000_0008);
        for raw in [0, 1, 2, 3, 4, u32::MAX] {
            assert_eq!(ActivityState::from_raw(raw).raw(), raw);
        }
        assert_eq!(ActivityState::from_raw(1), ActivityState::Hlt);
        assert_eq!(ActivityState::from_raw(9), ActivityState::Unknown(9));
        assert_eq!(PendingDebugExceptions::BS.bits(), 1 << 14);
        assert_eq!(PendingDebugExceptions::ENABLED_BREAKPOINT.bits(), 1 << 12);
        assert_eq!(PendingDebugExceptions::RTM.bits(), 1 << 16);
        assert!(vector::has_error_code(8) && vector::has_error_code(17));
        assert!(!vector::has_error_code(3) && !vector::has_error_code(21));
    }
}
