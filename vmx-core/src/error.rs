//! VMX instruction failures: `VMfailInvalid` and `VMfailValid` with the VM-instruction error
//! number (SDM Vol. 3C, "VM Instruction Error Numbers").
#![forbid(unsafe_code)]

use core::fmt;

/// How a VMX instruction failed.
///
/// VMX instructions report `VMfailInvalid` with RFLAGS.CF = 1 (there is no current VMCS to hold an
/// error number) and `VMfailValid` with RFLAGS.ZF = 1, the number being in the VM-instruction error
/// field (encoding 0x4400) of the current VMCS.
///
/// Exhaustive on purpose: the SDM defines exactly these two failure conventions ("Conventions" in
/// the VMX instruction reference), so a `match` needs no wildcard arm. New error numbers go into
/// [`VmInstructionError`], which is `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VmFail {
    /// `VMfailInvalid` (CF = 1): no current VMCS, so no error number.
    Invalid,
    /// `VMfailValid` (ZF = 1) with the VM-instruction error number read from field 0x4400.
    Valid(VmInstructionError),
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => f.write_str("VMfailInvalid (CF=1, no current VMCS)"),
            Self::Valid(error) => write!(f, "VMfailValid: {error}"),
        }
    }
}

macro_rules! vm_instruction_errors {
    ($( $(#[$doc:meta])* $name:ident = $number:literal, $text:literal; )*) => {
        /// A VM-instruction error number (VMCS field 0x4400).
        ///
        /// Every number the SDM defines has a variant; any other number (including the reserved
        /// 14, 21 and 27) is kept as [`VmInstructionError::Unknown`] so nothing is lost.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[non_exhaustive]
        pub enum VmInstructionError {
            $( $(#[$doc])* $name, )*
            /// A number the SDM does not define (kept as read).
            Unknown(u32),
        }

        impl VmInstructionError {
            /// Every named error, in SDM order (for tests and tools).
            pub const ALL: &'static [Self] = &[$( Self::$name, )*];

            /// Decodes a VM-instruction error number; unknown numbers are kept.
            pub const fn from_number(number: u32) -> Self {
                match number {
                    $( $number => Self::$name, )*
                    other => Self::Unknown(other),
                }
            }

            /// The SDM number of this error.
            pub const fn number(self) -> u32 {
                match self {
                    $( Self::$name => $number, )*
                    Self::Unknown(other) => other,
                }
            }

            /// The SDM's description of this error, or `None` for an unknown number.
            pub const fn description(self) -> Option<&'static str> {
                match self {
                    $( Self::$name => Some($text), )*
                    Self::Unknown(_) => None,
                }
            }
        }
    };
}

vm_instruction_errors! {
    /// 1: VMCALL executed in VMX root operation.
    VmcallInVmxRoot = 1, "VMCALL executed in VMX root operation";
    /// 2: VMCLEAR with invalid physical address.
    VmclearInvalidAddress = 2, "VMCLEAR with invalid physical address";
    /// 3: VMCLEAR with VMXON pointer.
    VmclearVmxonPointer = 3, "VMCLEAR with VMXON pointer";
    /// 4: VMLAUNCH with non-clear VMCS.
    VmlaunchNonClearVmcs = 4, "VMLAUNCH with non-clear VMCS";
    /// 5: VMRESUME with non-launched VMCS.
    VmresumeNonLaunchedVmcs = 5, "VMRESUME with non-launched VMCS";
    /// 6: VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME).
    VmresumeAfterVmxoff = 6, "VMRESUME after VMXOFF";
    /// 7: VM entry with invalid control field(s).
    EntryInvalidControlFields = 7, "VM entry with invalid control field(s)";
    /// 8: VM entry with invalid host-state field(s).
    EntryInvalidHostStateFields = 8, "VM entry with invalid host-state field(s)";
    /// 9: VMPTRLD with invalid physical address.
    VmptrldInvalidAddress = 9, "VMPTRLD with invalid physical address";
    /// 10: VMPTRLD with VMXON pointer.
    VmptrldVmxonPointer = 10, "VMPTRLD with VMXON pointer";
    /// 11: VMPTRLD with incorrect VMCS revision identifier.
    VmptrldIncorrectRevisionId = 11, "VMPTRLD with incorrect VMCS revision identifier";
    /// 12: VMREAD/VMWRITE from/to unsupported VMCS component.
    UnsupportedVmcsComponent = 12, "VMREAD/VMWRITE from/to unsupported VMCS component";
    /// 13: VMWRITE to read-only VMCS component.
    VmwriteReadOnlyComponent = 13, "VMWRITE to read-only VMCS component";
    /// 15: VMXON executed in VMX root operation.
    VmxonInVmxRoot = 15, "VMXON executed in VMX root operation";
    /// 16: VM entry with invalid executive-VMCS pointer.
    EntryInvalidExecutiveVmcsPointer = 16, "VM entry with invalid executive-VMCS pointer";
    /// 17: VM entry with non-launched executive VMCS.
    EntryNonLaunchedExecutiveVmcs = 17, "VM entry with non-launched executive VMCS";
    /// 18: VM entry with executive-VMCS pointer not VMXON pointer.
    EntryExecutiveVmcsPointerNotVmxonPointer = 18,
        "VM entry with executive-VMCS pointer not VMXON pointer (when attempting to deactivate the dual-monitor treatment)";
    /// 19: VMCALL with non-clear VMCS.
    VmcallNonClearVmcs = 19, "VMCALL with non-clear VMCS";
    /// 20: VMCALL with invalid VM-exit control fields.
    VmcallInvalidExitControlFields = 20, "VMCALL with invalid VM-exit control fields";
    /// 22: VMCALL with incorrect MSEG revision identifier.
    VmcallIncorrectMsegRevisionId = 22, "VMCALL with incorrect MSEG revision identifier";
    /// 23: VMXOFF under dual-monitor treatment of SMIs and SMM.
    VmxoffUnderDualMonitor = 23, "VMXOFF under dual-monitor treatment of SMIs and SMM";
    /// 24: VMCALL with invalid SMM-monitor features.
    VmcallInvalidSmmMonitorFeatures = 24, "VMCALL with invalid SMM-monitor features";
    /// 25: VM entry with invalid VM-execution control fields in executive VMCS.
    EntryInvalidExecutiveControls = 25,
        "VM entry with invalid VM-execution control fields in executive VMCS (when attempting to return from SMM)";
    /// 26: VM entry with events blocked by MOV SS.
    EntryEventsBlockedByMovSs = 26, "VM entry with events blocked by MOV SS";
    /// 28: Invalid operand to INVEPT/INVVPID.
    InvalidInveptInvvpidOperand = 28, "Invalid operand to INVEPT/INVVPID";
}

impl From<u32> for VmInstructionError {
    fn from(number: u32) -> Self {
        Self::from_number(number)
    }
}

impl fmt::Display for VmInstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(text) => write!(f, "VM-instruction error {}: {}", self.number(), text),
            None => write!(f, "VM-instruction error {} (not defined by the SDM)", self.number()),
        }
    }
}

impl core::error::Error for VmFail {}
impl core::error::Error for VmInstructionError {}
impl core::error::Error for crate::caps::MissingMsr {}
impl core::error::Error for crate::caps::FixedBitError {}
impl core::error::Error for crate::controls::ControlError {}
impl core::error::Error for crate::entry_check::EntryCheckError {}
impl core::error::Error for crate::event::InterruptionInfoError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers of the SDM table "VM Instruction Error Numbers", checked one by one.
    #[test]
    fn numbers_match_the_sdm_table() {
        let expected: &[(u32, VmInstructionError)] = &[
            (1, VmInstructionError::VmcallInVmxRoot),
            (2, VmInstructionError::VmclearInvalidAddress),
            (3, VmInstructionError::VmclearVmxonPointer),
            (4, VmInstructionError::VmlaunchNonClearVmcs),
            (5, VmInstructionError::VmresumeNonLaunchedVmcs),
            (6, VmInstructionError::VmresumeAfterVmxoff),
            (7, VmInstructionError::EntryInvalidControlFields),
            (8, VmInstructionError::EntryInvalidHostStateFields),
            (9, VmInstructionError::VmptrldInvalidAddress),
            (10, VmInstructionError::VmptrldVmxonPointer),
            (11, VmInstructionError::VmptrldIncorrectRevisionId),
            (12, VmInstructionError::UnsupportedVmcsComponent),
            (13, VmInstructionError::VmwriteReadOnlyComponent),
            (15, VmInstructionError::VmxonInVmxRoot),
            (16, VmInstructionError::EntryInvalidExecutiveVmcsPointer),
            (17, VmInstructionError::EntryNonLaunchedExecutiveVmcs),
            (18, VmInstructionError::EntryExecutiveVmcsPointerNotVmxonPointer),
            (19, VmInstructionError::VmcallNonClearVmcs),
            (20, VmInstructionError::VmcallInvalidExitControlFields),
            (22, VmInstructionError::VmcallIncorrectMsegRevisionId),
            (23, VmInstructionError::VmxoffUnderDualMonitor),
            (24, VmInstructionError::VmcallInvalidSmmMonitorFeatures),
            (25, VmInstructionError::EntryInvalidExecutiveControls),
            (26, VmInstructionError::EntryEventsBlockedByMovSs),
            (28, VmInstructionError::InvalidInveptInvvpidOperand),
        ];
        assert_eq!(expected.len(), VmInstructionError::ALL.len());
        for &(number, error) in expected {
            assert_eq!(VmInstructionError::from_number(number), error, "number {number}");
            assert_eq!(error.number(), number);
            assert!(error.description().is_some());
        }
    }

    #[test]
    fn reserved_and_unknown_numbers_are_kept() {
        for number in [0, 14, 21, 27, 29, 0xFFFF_FFFF] {
            let error = VmInstructionError::from_number(number);
            assert_eq!(error, VmInstructionError::Unknown(number));
            assert_eq!(error.number(), number);
            assert_eq!(error.description(), None);
        }
    }

    #[test]
    fn display_names_the_number() {
        use std::string::ToString;
        let text = VmFail::Valid(VmInstructionError::VmwriteReadOnlyComponent).to_string();
        assert_eq!(
            text,
            "VMfailValid: VM-instruction error 13: VMWRITE to read-only VMCS component"
        );
        assert!(VmInstructionError::Unknown(99).to_string().contains("99"));
    }
}
