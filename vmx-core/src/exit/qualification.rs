//! Exit-qualification and instruction-information decoders (SDM Vol. 3C "Exit Qualification
//! for ..." tables and "VM-Exit Instruction Information"). Every decoder accepts any value,
//! never panics, keeps the raw bits (`raw()` returns the input) and reports unknown encodings
//! as values.
#![forbid(unsafe_code)]

use super::BasicExitReason;
use crate::caps::EptVpidCapabilities;

macro_rules! raw_newtype {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(transparent)]
        pub struct $name($ty);

        impl $name {
            /// Wraps the raw value (any bits).
            pub const fn from_raw(raw: $ty) -> Self {
                Self(raw)
            }

            /// The raw value, unchanged.
            pub const fn raw(self) -> $ty {
                self.0
            }

            #[allow(dead_code, reason = "not every decoder has single-bit fields")]
            const fn bit(self, n: u32) -> bool {
                (self.0 >> n) & 1 != 0
            }

            #[allow(dead_code, reason = "not every decoder has multi-bit fields")]
            const fn bits(self, low: u32, width: u32) -> u64 {
                ((self.0 as u64) >> low) & ((1u64 << width) - 1)
            }
        }
    };
}

/// A general-purpose register number as used in qualifications (0 RAX ... 15 R15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GeneralRegister(pub u8);

/// Control-register access type (bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CrAccessType {
    /// 0: MOV to CR.
    MovToCr,
    /// 1: MOV from CR.
    MovFromCr,
    /// 2: CLTS.
    Clts,
    /// 3: LMSW.
    Lmsw,
}

raw_newtype! {
    /// Exit qualification for control-register accesses (reason 28).
    CrAccess: u64
}

impl CrAccess {
    /// Bits 3:0: the control register (0, 3, 4, 8).
    pub const fn control_register(self) -> u8 {
        self.bits(0, 4) as u8
    }
    /// Bits 5:4: the access type.
    pub const fn access_type(self) -> CrAccessType {
        match self.bits(4, 2) {
            0 => CrAccessType::MovToCr,
            1 => CrAccessType::MovFromCr,
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw,
        }
    }
    /// Bit 6: LMSW operand type is memory (`false`: register).
    pub const fn lmsw_memory_operand(self) -> bool {
        self.bit(6)
    }
    /// Bits 11:8: the general register of MOV CR.
    pub const fn register(self) -> GeneralRegister {
        GeneralRegister(self.bits(8, 4) as u8)
    }
    /// Bits 31:16: LMSW source data.
    pub const fn lmsw_source_data(self) -> u16 {
        self.bits(16, 16) as u16
    }
}

raw_newtype! {
    /// Exit qualification for MOV DR (reason 29).
    MovDr: u64
}

impl MovDr {
    /// Bits 2:0: the debug register.
    pub const fn debug_register(self) -> u8 {
        self.bits(0, 3) as u8
    }
    /// Bit 4: `true` for MOV from DR, `false` for MOV to DR.
    pub const fn from_dr(self) -> bool {
        self.bit(4)
    }
    /// Bits 11:8: the general register.
    pub const fn register(self) -> GeneralRegister {
        GeneralRegister(self.bits(8, 4) as u8)
    }
}

raw_newtype! {
    /// Exit qualification for I/O instructions (reason 30).
    IoInstruction: u64
}

impl IoInstruction {
    /// Bits 2:0 plus one: the access size in bytes (1, 2 or 4; other encodings give 3, 5..8).
    pub const fn size(self) -> u8 {
        self.bits(0, 3) as u8 + 1
    }
    /// Bit 3: IN (`false`: OUT).
    pub const fn is_in(self) -> bool {
        self.bit(3)
    }
    /// Bit 4: string instruction.
    pub const fn is_string(self) -> bool {
        self.bit(4)
    }
    /// Bit 5: REP prefixed.
    pub const fn is_rep(self) -> bool {
        self.bit(5)
    }
    /// Bit 6: immediate port operand (`false`: DX).
    pub const fn immediate_operand(self) -> bool {
        self.bit(6)
    }
    /// Bits 31:16: the port.
    pub const fn port(self) -> u16 {
        self.bits(16, 16) as u16
    }
}

raw_newtype! {
    /// Exit qualification for EPT violations (reason 48).
    EptViolation: u64
}

impl EptViolation {
    /// Bit 0: the access was a data read.
    pub const fn read(self) -> bool {
        self.bit(0)
    }
    /// Bit 1: the access was a data write.
    pub const fn write(self) -> bool {
        self.bit(1)
    }
    /// Bit 2: the access was an instruction fetch.
    pub const fn instruction_fetch(self) -> bool {
        self.bit(2)
    }
    /// Bit 3: the guest-physical address was readable.
    pub const fn readable(self) -> bool {
        self.bit(3)
    }
    /// Bit 4: writable.
    pub const fn writable(self) -> bool {
        self.bit(4)
    }
    /// Bit 5: executable (supervisor-mode executable with MBEC).
    pub const fn executable(self) -> bool {
        self.bit(5)
    }
    /// Bit 6: user-mode executable (MBEC).
    pub const fn user_mode_executable(self) -> bool {
        self.bit(6)
    }
    /// Bit 7: the guest-linear-address field is valid.
    pub const fn guest_linear_address_valid(self) -> bool {
        self.bit(7)
    }
    /// Bit 8 (when bit 7 is set): the access was to the translated linear address, not a
    /// paging-structure entry.
    pub const fn translated_access(self) -> bool {
        self.bit(8)
    }
    /// Bit 9 (advanced VM-exit information): the linear address is a user-mode address
    /// (`false`: supervisor-mode). Defined only when bits 7 and 8 are set and the processor
    /// reports advanced VM-exit information for EPT violations; see
    /// [`linear_address_attributes`](Self::linear_address_attributes).
    pub const fn user_mode_linear_address(self) -> bool {
        self.bit(9)
    }
    /// Bit 10 (advanced VM-exit information): the linear address translates to a read/write
    /// page (`false`: read-only). Defined under the same conditions as bit 9.
    pub const fn writable_linear_address(self) -> bool {
        self.bit(10)
    }
    /// Bit 11 (advanced VM-exit information): the linear address translates to an
    /// execute-disabled page (`false`: executable). Defined under the same conditions as bit 9.
    pub const fn execute_disabled_linear_address(self) -> bool {
        self.bit(11)
    }
    /// Bit 12: NMI unblocking due to IRET.
    pub const fn nmi_unblocking_due_to_iret(self) -> bool {
        self.bit(12)
    }
    /// Bit 13: the access was a shadow-stack access (CET).
    pub const fn shadow_stack_access(self) -> bool {
        self.bit(13)
    }
    /// Bit 14: with the supervisor shadow-stack control enabled (EPTP bit 7; offered when
    /// [`EptVpidCapabilities::SUPERVISOR_SHADOW_STACK`] is set), the supervisor shadow-stack bit
    /// (bit 60) of the EPT entry that maps the page; 0 otherwise.
    pub const fn supervisor_shadow_stack_page(self) -> bool {
        self.bit(14)
    }

    /// Bits 9-11, when they are defined: bits 7 and 8 set (the access was to the translation
    /// of a linear address) and `capabilities` reporting advanced VM-exit information for EPT
    /// violations (IA32_VMX_EPT_VPID_CAP bit 22). `None` otherwise, whatever the bits hold.
    pub const fn linear_address_attributes(
        self,
        capabilities: EptVpidCapabilities,
    ) -> Option<LinearAddressAttributes> {
        if !capabilities.contains(EptVpidCapabilities::ADVANCED_EXIT_INFORMATION)
            || !self.guest_linear_address_valid()
            || !self.translated_access()
        {
            return None;
        }
        Some(LinearAddressAttributes {
            user_mode: self.user_mode_linear_address(),
            writable: self.writable_linear_address(),
            execute_disabled: self.execute_disabled_linear_address(),
        })
    }
}

/// What the guest's paging structures say about the linear address of an EPT violation (bits
/// 9-11 of the qualification, "advanced VM-exit information for EPT violations").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinearAddressAttributes {
    /// Bit 9: user-mode address (U/S = 1 at every level); `false`: supervisor-mode.
    pub user_mode: bool,
    /// Bit 10: read/write page; `false`: read-only.
    pub writable: bool,
    /// Bit 11: execute-disabled page; `false`: executable.
    pub execute_disabled: bool,
}

raw_newtype! {
    /// Exit qualification for NOTIFY VM exits (reason 75; SDM Vol. 3C "Exit Qualification for
    /// NOTIFY VM Exits").
    Notify: u64
}

impl Notify {
    /// Bit 0: the VM context is invalid: the guest state in the VMCS is corrupted and the
    /// guest cannot be resumed (a hypervisor stops the guest).
    pub const fn vm_context_invalid(self) -> bool {
        self.bit(0)
    }
    /// Bit 12: NMI unblocking due to IRET (the exit happened while an IRET unblocked NMIs:
    /// with virtual NMIs, set blocking by NMI again before the next entry).
    pub const fn nmi_unblocking_due_to_iret(self) -> bool {
        self.bit(12)
    }
}

/// Why a VM entry failed while loading guest state (the exit qualification of basic reason 33,
/// SDM Vol. 3C "VM-Entry Failures During or After Loading Guest State").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EntryFailureCode {
    /// 0: no further information (the default).
    Default,
    /// 2: a problem loading the PDPTRs.
    PdpteLoad,
    /// 3: an NMI injection into a guest that blocks events through the STI-blocking bit of
    /// the interruptibility state.
    NmiInjection,
    /// 4: an invalid VMCS link pointer.
    VmcsLinkPointer,
    /// Any other value (1 is not used; the rest are undefined), kept.
    Unknown(u64),
}

raw_newtype! {
    /// Exit qualification for VM-entry failures due to invalid guest state (basic reason 33).
    InvalidGuestState: u64
}

impl InvalidGuestState {
    /// The failure code (all 64 bits; unknown values are kept).
    pub const fn code(self) -> EntryFailureCode {
        match self.0 {
            0 => EntryFailureCode::Default,
            2 => EntryFailureCode::PdpteLoad,
            3 => EntryFailureCode::NmiInjection,
            4 => EntryFailureCode::VmcsLinkPointer,
            other => EntryFailureCode::Unknown(other),
        }
    }
}

/// APIC-access type (bits 15:12 of the APIC-access qualification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ApicAccessType {
    /// 0: linear access for a data read during instruction execution.
    LinearRead,
    /// 1: linear access for a data write during instruction execution.
    LinearWrite,
    /// 2: linear access for an instruction fetch.
    LinearFetch,
    /// 3: linear access (read or write) during event delivery.
    LinearEventDelivery,
    /// 10: guest-physical access during event delivery.
    PhysicalEventDelivery,
    /// 15: guest-physical access for an instruction fetch or during instruction execution.
    PhysicalInstruction,
    /// Any other value (kept).
    Unknown(u8),
}

raw_newtype! {
    /// Exit qualification for APIC-access exits (reason 44).
    ApicAccess: u64
}

impl ApicAccess {
    /// Bits 11:0: offset in the APIC page (linear accesses).
    pub const fn offset(self) -> u16 {
        self.bits(0, 12) as u16
    }
    /// Bits 15:12.
    pub const fn access_type(self) -> ApicAccessType {
        match self.bits(12, 4) as u8 {
            0 => ApicAccessType::LinearRead,
            1 => ApicAccessType::LinearWrite,
            2 => ApicAccessType::LinearFetch,
            3 => ApicAccessType::LinearEventDelivery,
            10 => ApicAccessType::PhysicalEventDelivery,
            15 => ApicAccessType::PhysicalInstruction,
            other => ApicAccessType::Unknown(other),
        }
    }
    /// Bit 16: asynchronous and not during event delivery (NMI unblocking semantics apply).
    pub const fn asynchronous(self) -> bool {
        self.bit(16)
    }
}

/// Task-switch source (bits 31:30).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TaskSwitchSource {
    /// 0: CALL.
    Call,
    /// 1: IRET.
    Iret,
    /// 2: JMP.
    Jmp,
    /// 3: task gate in the IDT.
    TaskGate,
}

raw_newtype! {
    /// Exit qualification for task switches (reason 9).
    TaskSwitch: u64
}

impl TaskSwitch {
    /// Bits 15:0: the new TSS selector.
    pub const fn selector(self) -> u16 {
        self.bits(0, 16) as u16
    }
    /// Bits 31:30: the source.
    pub const fn source(self) -> TaskSwitchSource {
        match self.bits(30, 2) {
            0 => TaskSwitchSource::Call,
            1 => TaskSwitchSource::Iret,
            2 => TaskSwitchSource::Jmp,
            _ => TaskSwitchSource::TaskGate,
        }
    }
}

raw_newtype! {
    /// Exit qualification for debug exceptions (#DB exits, reason 0 with vector 1).
    DebugExceptions: u64
}

impl DebugExceptions {
    /// Bits 3:0: B0-B3 (breakpoint conditions met).
    pub const fn breakpoints(self) -> u8 {
        self.bits(0, 4) as u8
    }
    /// Bit 13: BD (debug-register access detected).
    pub const fn bd(self) -> bool {
        self.bit(13)
    }
    /// Bit 14: BS (single step).
    pub const fn bs(self) -> bool {
        self.bit(14)
    }
    /// Bit 16: RTM.
    pub const fn rtm(self) -> bool {
        self.bit(16)
    }
}

raw_newtype! {
    /// VM-exit instruction information for VMREAD/VMWRITE, VMCLEAR/VMPTRLD/VMPTRST/VMXON,
    /// INVEPT/INVVPID/INVPCID (SDM "Format of the VM-Exit Instruction-Information Field").
    VmxInstructionInfo: u32
}

/// The memory-operand fields that VMX-instruction and descriptor-table instruction information
/// share (SDM "Format of the VM-Exit Instruction-Information Field"): scaling 1:0, register
/// operand 6:3, address size 9:7, register/memory 10, segment 17:15, index 21:18 (+ invalid 22),
/// base 26:23 (+ invalid 27).
macro_rules! memory_operand_fields {
    ($name:ident) => {
        impl $name {
            /// Bits 1:0: scaling (0 none, 1 by 2, 2 by 4, 3 by 8).
            pub const fn scaling(self) -> u8 {
                self.bits(0, 2) as u8
            }
            /// Bits 6:3: the register operand (when bit 10 says register).
            pub const fn register1(self) -> GeneralRegister {
                GeneralRegister(self.bits(3, 4) as u8)
            }
            /// Bits 9:7: address size (0 16-bit, 1 32-bit, 2 64-bit).
            pub const fn address_size(self) -> u8 {
                self.bits(7, 3) as u8
            }
            /// Bit 10: the operand is a register (`true`) or memory (`false`).
            pub const fn register_operand(self) -> bool {
                self.bit(10)
            }
            /// Bits 17:15: segment register (0 ES ... 5 GS).
            pub const fn segment(self) -> u8 {
                self.bits(15, 3) as u8
            }
            /// Bits 21:18: index register.
            pub const fn index_register(self) -> GeneralRegister {
                GeneralRegister(self.bits(18, 4) as u8)
            }
            /// Bit 22: index register invalid.
            pub const fn index_invalid(self) -> bool {
                self.bit(22)
            }
            /// Bits 26:23: base register.
            pub const fn base_register(self) -> GeneralRegister {
                GeneralRegister(self.bits(23, 4) as u8)
            }
            /// Bit 27: base register invalid.
            pub const fn base_invalid(self) -> bool {
                self.bit(27)
            }
        }
    };
}

memory_operand_fields!(VmxInstructionInfo);
memory_operand_fields!(DescriptorTableInfo);

impl VmxInstructionInfo {
    /// Bits 31:28: register operand 2 (VMREAD/VMWRITE field encoding, INVEPT/INVVPID type).
    pub const fn register2(self) -> GeneralRegister {
        GeneralRegister(self.bits(28, 4) as u8)
    }
}

/// The instruction of a descriptor-table exit (bits 29:28 of its instruction information).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DescriptorTableInstruction {
    /// SGDT (reason 46) or SLDT (reason 47).
    StoreGdtOrLdt,
    /// SIDT or STR.
    StoreIdtOrTr,
    /// LGDT or LLDT.
    LoadGdtOrLdt,
    /// LIDT or LTR.
    LoadIdtOrTr,
}

raw_newtype! {
    /// VM-exit instruction information for GDTR/IDTR (reason 46) and LDTR/TR (reason 47)
    /// accesses.
    DescriptorTableInfo: u32
}

impl DescriptorTableInfo {
    /// Bit 11: operand size 32-bit (GDTR/IDTR only; `false`: 16-bit).
    pub const fn operand_size_32(self) -> bool {
        self.bit(11)
    }
    /// Bits 29:28: the instruction.
    pub const fn instruction(self) -> DescriptorTableInstruction {
        match self.bits(28, 2) {
            0 => DescriptorTableInstruction::StoreGdtOrLdt,
            1 => DescriptorTableInstruction::StoreIdtOrTr,
            2 => DescriptorTableInstruction::LoadGdtOrLdt,
            _ => DescriptorTableInstruction::LoadIdtOrTr,
        }
    }
}

/// An exit qualification decoded according to the basic exit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ExitQualification {
    /// Reason 28.
    CrAccess(CrAccess),
    /// Reason 29.
    MovDr(MovDr),
    /// Reason 30.
    IoInstruction(IoInstruction),
    /// Reason 48.
    EptViolation(EptViolation),
    /// Reason 44.
    ApicAccess(ApicAccess),
    /// Reason 9.
    TaskSwitch(TaskSwitch),
    /// Reason 75.
    Notify(Notify),
    /// Reason 33 (VM-entry failure due to invalid guest state).
    InvalidGuestState(InvalidGuestState),
    /// Any other reason: the raw qualification (its meaning depends on the reason; for
    /// exception exits it is [`DebugExceptions`] for #DB and the faulting address for #PF).
    Raw(u64),
}

impl ExitQualification {
    /// Decodes `raw` for `reason`.
    pub const fn decode(reason: BasicExitReason, raw: u64) -> Self {
        match reason {
            BasicExitReason::ControlRegisterAccess => Self::CrAccess(CrAccess(raw)),
            BasicExitReason::MovDr => Self::MovDr(MovDr(raw)),
            BasicExitReason::IoInstruction => Self::IoInstruction(IoInstruction(raw)),
            BasicExitReason::EptViolation => Self::EptViolation(EptViolation(raw)),
            BasicExitReason::ApicAccess => Self::ApicAccess(ApicAccess(raw)),
            BasicExitReason::TaskSwitch => Self::TaskSwitch(TaskSwitch(raw)),
            BasicExitReason::Notify => Self::Notify(Notify(raw)),
            BasicExitReason::EntryFailureInvalidGuestState => {
                Self::InvalidGuestState(InvalidGuestState(raw))
            }
            _ => Self::Raw(raw),
        }
    }

    /// The raw qualification, whatever the variant.
    pub const fn raw(self) -> u64 {
        match self {
            Self::CrAccess(q) => q.raw(),
            Self::MovDr(q) => q.raw(),
            Self::IoInstruction(q) => q.raw(),
            Self::EptViolation(q) => q.raw(),
            Self::ApicAccess(q) => q.raw(),
            Self::TaskSwitch(q) => q.raw(),
            Self::Notify(q) => q.raw(),
            Self::InvalidGuestState(q) => q.raw(),
            Self::Raw(raw) => raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_access_fields() {
        // MOV CR4 <- R9: CR 4, type 0, register 9.
        let q = CrAccess::from_raw(0x0904);
        assert_eq!(q.control_register(), 4);
        assert_eq!(q.access_type(), CrAccessType::MovToCr);
        assert_eq!(q.register(), GeneralRegister(9));
        // LMSW from memory with source 0xABCD: type 3 (bits 5:4), bit 6, data in 31:16.
        let q = CrAccess::from_raw(0xABCD_0070);
        assert_eq!(q.access_type(), CrAccessType::Lmsw);
        assert!(q.lmsw_memory_operand());
        assert_eq!(q.lmsw_source_data(), 0xABCD);
        assert_eq!(CrAccess::from_raw(0x10).access_type(), CrAccessType::MovFromCr);
        assert_eq!(CrAccess::from_raw(0x20).access_type(), CrAccessType::Clts);
        assert_eq!(CrAccess::from_raw(u64::MAX).raw(), u64::MAX);
    }

    #[test]
    fn mov_dr_and_io_fields() {
        let q = MovDr::from_raw(0x0F17);
        assert_eq!(q.debug_register(), 7);
        assert!(q.from_dr());
        assert_eq!(q.register(), GeneralRegister(15));
        assert!(!MovDr::from_raw(0x7).from_dr());
        // IN AL, 0x60 (immediate): size 1, in, imm, port 0x60.
        let q = IoInstruction::from_raw(0x0060_0048);
        assert_eq!(q.size(), 1);
        assert!(q.is_in() && q.immediate_operand());
        assert!(!q.is_string() && !q.is_rep());
        assert_eq!(q.port(), 0x60);
        // REP OUTSD to DX=0x3F8.
        let q = IoInstruction::from_raw(0x03F8_0033);
        assert_eq!(q.size(), 4);
        assert!(!q.is_in() && q.is_string() && q.is_rep() && !q.immediate_operand());
        assert_eq!(q.port(), 0x3F8);
    }

    #[test]
    fn ept_violation_each_bit() {
        type Getter = fn(EptViolation) -> bool;
        let checks: [(u32, Getter); 15] = [
            (0, EptViolation::read),
            (1, EptViolation::write),
            (2, EptViolation::instruction_fetch),
            (3, EptViolation::readable),
            (4, EptViolation::writable),
            (5, EptViolation::executable),
            (6, EptViolation::user_mode_executable),
            (7, EptViolation::guest_linear_address_valid),
            (8, EptViolation::translated_access),
            (9, EptViolation::user_mode_linear_address),
            (10, EptViolation::writable_linear_address),
            (11, EptViolation::execute_disabled_linear_address),
            (12, EptViolation::nmi_unblocking_due_to_iret),
            (13, EptViolation::shadow_stack_access),
            (14, EptViolation::supervisor_shadow_stack_page),
        ];
        for (bit, getter) in checks {
            for other in 0..64 {
                assert_eq!(getter(EptViolation::from_raw(1 << other)), other == bit, "bit {bit}");
            }
        }
    }

    #[test]
    fn apic_access_task_switch_and_debug() {
        let q = ApicAccess::from_raw(0x10B0);
        assert_eq!(q.offset(), 0xB0);
        assert_eq!(q.access_type(), ApicAccessType::LinearWrite);
        assert_eq!(
            ApicAccess::from_raw(0xA000).access_type(),
            ApicAccessType::PhysicalEventDelivery
        );
        assert_eq!(ApicAccess::from_raw(0xF000).access_type(), ApicAccessType::PhysicalInstruction);
        assert_eq!(ApicAccess::from_raw(0x5000).access_type(), ApicAccessType::Unknown(5));
        let q = TaskSwitch::from_raw(0xC000_0028);
        assert_eq!(q.selector(), 0x28);
        assert_eq!(q.source(), TaskSwitchSource::TaskGate);
        assert_eq!(TaskSwitch::from_raw(0x4000_0000).source(), TaskSwitchSource::Iret);
        let q = DebugExceptions::from_raw(0x1_6005);
        assert_eq!(q.breakpoints(), 5);
        assert!(q.bd() && q.bs() && q.rtm());
    }

    #[test]
    fn instruction_information_fields() {
        // scaling 3, reg1 5, addr size 2, mem operand, seg 3 (DS), index 7, base 4, reg2 12.
        let raw = 3 | (5 << 3) | (2 << 7) | (3 << 15) | (7 << 18) | (4 << 23) | (12 << 28);
        let info = VmxInstructionInfo::from_raw(raw);
        assert_eq!(info.scaling(), 3);
        assert_eq!(info.register1(), GeneralRegister(5));
        assert_eq!(info.address_size(), 2);
        assert!(!info.register_operand());
        assert_eq!(info.segment(), 3);
        assert_eq!(info.index_register(), GeneralRegister(7));
        assert!(!info.index_invalid());
        assert_eq!(info.base_register(), GeneralRegister(4));
        assert!(!info.base_invalid());
        assert_eq!(info.register2(), GeneralRegister(12));
        let info = DescriptorTableInfo::from_raw((3 << 28) | (1 << 11) | (1 << 22) | (1 << 27));
        assert_eq!(info.instruction(), DescriptorTableInstruction::LoadIdtOrTr);
        assert!(info.operand_size_32() && info.index_invalid() && info.base_invalid());
        assert_eq!(
            DescriptorTableInfo::from_raw(1 << 28).instruction(),
            DescriptorTableInstruction::StoreIdtOrTr
        );
    }

    #[test]
    fn every_access_type_and_source_arm() {
        let cr_types = [
            (0, CrAccessType::MovToCr),
            (1, CrAccessType::MovFromCr),
            (2, CrAccessType::Clts),
            (3, CrAccessType::Lmsw),
        ];
        for (number, access_type) in cr_types {
            assert_eq!(CrAccess::from_raw(number << 4).access_type(), access_type);
            // Neighbouring bits set do not leak into the 2-bit field.
            assert_eq!(CrAccess::from_raw(!(3 << 4) | (number << 4)).access_type(), access_type);
        }
        let sources = [
            (0, TaskSwitchSource::Call),
            (1, TaskSwitchSource::Iret),
            (2, TaskSwitchSource::Jmp),
            (3, TaskSwitchSource::TaskGate),
        ];
        for (number, source) in sources {
            assert_eq!(TaskSwitch::from_raw(number << 30).source(), source);
            assert_eq!(TaskSwitch::from_raw(!(3 << 30) | (number << 30)).source(), source);
        }
        let instructions = [
            (0, DescriptorTableInstruction::StoreGdtOrLdt),
            (1, DescriptorTableInstruction::StoreIdtOrTr),
            (2, DescriptorTableInstruction::LoadGdtOrLdt),
            (3, DescriptorTableInstruction::LoadIdtOrTr),
        ];
        for (number, instruction) in instructions {
            assert_eq!(DescriptorTableInfo::from_raw(number << 28).instruction(), instruction);
            let others = !(3u32 << 28) | (number << 28);
            assert_eq!(DescriptorTableInfo::from_raw(others).instruction(), instruction);
        }
        let apic_types = [
            (0, ApicAccessType::LinearRead),
            (1, ApicAccessType::LinearWrite),
            (2, ApicAccessType::LinearFetch),
            (3, ApicAccessType::LinearEventDelivery),
            (10, ApicAccessType::PhysicalEventDelivery),
            (15, ApicAccessType::PhysicalInstruction),
        ];
        for number in 0..16u64 {
            let expected = apic_types
                .iter()
                .find(|(n, _)| *n == number)
                .map_or(ApicAccessType::Unknown(number as u8), |(_, t)| *t);
            assert_eq!(ApicAccess::from_raw(number << 12).access_type(), expected);
        }
    }

    #[test]
    fn single_bit_fields_set_and_clear() {
        type Getter = fn(u64) -> bool;
        let fields: [(u32, Getter); 11] = [
            (6, |raw| CrAccess::from_raw(raw).lmsw_memory_operand()),
            (4, |raw| MovDr::from_raw(raw).from_dr()),
            (3, |raw| IoInstruction::from_raw(raw).is_in()),
            (4, |raw| IoInstruction::from_raw(raw).is_string()),
            (5, |raw| IoInstruction::from_raw(raw).is_rep()),
            (6, |raw| IoInstruction::from_raw(raw).immediate_operand()),
            (16, |raw| ApicAccess::from_raw(raw).asynchronous()),
            (13, |raw| DebugExceptions::from_raw(raw).bd()),
            (14, |raw| DebugExceptions::from_raw(raw).bs()),
            (16, |raw| DebugExceptions::from_raw(raw).rtm()),
            (11, |raw| DescriptorTableInfo::from_raw(raw as u32).operand_size_32()),
        ];
        for (bit, getter) in fields {
            assert!(getter(1 << bit), "bit {bit} alone");
            assert!(!getter(0), "bit {bit} from zero");
            assert!(!getter(!(1 << bit)), "bit {bit} clear, every other bit set");
        }
    }

    #[test]
    fn multi_bit_fields_whole_width() {
        for cr in [0, 3, 4, 8, 15] {
            assert_eq!(CrAccess::from_raw(cr).control_register(), cr as u8);
        }
        assert_eq!(CrAccess::from_raw(u64::MAX).control_register(), 15);
        assert_eq!(CrAccess::from_raw(u64::MAX).register(), GeneralRegister(15));
        assert_eq!(CrAccess::from_raw(0x0001_0000).lmsw_source_data(), 1);
        assert_eq!(MovDr::from_raw(u64::MAX).debug_register(), 7);
        assert_eq!(MovDr::from_raw(0x0300).register(), GeneralRegister(3));
        assert_eq!(MovDr::from_raw(0).debug_register(), 0);
        for (bits, size) in [(0, 1), (1, 2), (3, 4), (7, 8)] {
            assert_eq!(IoInstruction::from_raw(bits).size(), size);
        }
        assert_eq!(IoInstruction::from_raw(0xFFFF_0000).port(), 0xFFFF);
        assert_eq!(ApicAccess::from_raw(u64::MAX).offset(), 0xFFF);
        assert_eq!(ApicAccess::from_raw(0x0FFF_0001).offset(), 1);
        assert_eq!(TaskSwitch::from_raw(u64::MAX).selector(), 0xFFFF);
        assert_eq!(DebugExceptions::from_raw(u64::MAX).breakpoints(), 0xF);
        assert_eq!(DebugExceptions::from_raw(0x2).breakpoints(), 2);
        let info = VmxInstructionInfo::from_raw(u32::MAX);
        assert_eq!(info.register2(), GeneralRegister(15));
        assert!(info.register_operand() && info.index_invalid() && info.base_invalid());
    }

    #[test]
    fn decode_reaches_every_decoder() {
        let raw = 0x1234_5678;
        assert_eq!(
            ExitQualification::decode(BasicExitReason::ControlRegisterAccess, raw),
            ExitQualification::CrAccess(CrAccess::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::MovDr, raw),
            ExitQualification::MovDr(MovDr::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::IoInstruction, raw),
            ExitQualification::IoInstruction(IoInstruction::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::EptViolation, raw),
            ExitQualification::EptViolation(EptViolation::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::ApicAccess, raw),
            ExitQualification::ApicAccess(ApicAccess::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::TaskSwitch, raw),
            ExitQualification::TaskSwitch(TaskSwitch::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::Notify, raw),
            ExitQualification::Notify(Notify::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::EntryFailureInvalidGuestState, raw),
            ExitQualification::InvalidGuestState(InvalidGuestState::from_raw(raw))
        );
        assert_eq!(
            ExitQualification::decode(BasicExitReason::ExceptionOrNmi, raw),
            ExitQualification::Raw(raw)
        );
        // Reason 34 (MSR loading) is not reason 33: its qualification is an entry index.
        assert_eq!(
            ExitQualification::decode(BasicExitReason::EntryFailureMsrLoading, raw),
            ExitQualification::Raw(raw)
        );
    }

    #[test]
    fn ept_violation_linear_address_attributes_need_bits_7_8_and_the_capability() {
        let advanced = EptVpidCapabilities::ADVANCED_EXIT_INFORMATION;
        // Bits 7, 8, 9 and 11: user-mode, read-only, execute-disabled.
        let q = EptViolation::from_raw(0b1011_1000_0000);
        assert_eq!(
            q.linear_address_attributes(advanced),
            Some(LinearAddressAttributes {
                user_mode: true,
                writable: false,
                execute_disabled: true
            })
        );
        // Each attribute from its own bit.
        let base = 0b1_1000_0000; // bits 7 and 8
        for (bit, expected) in [
            (
                9,
                LinearAddressAttributes {
                    user_mode: true,
                    writable: false,
                    execute_disabled: false,
                },
            ),
            (
                10,
                LinearAddressAttributes {
                    user_mode: false,
                    writable: true,
                    execute_disabled: false,
                },
            ),
            (
                11,
                LinearAddressAttributes {
                    user_mode: false,
                    writable: false,
                    execute_disabled: true,
                },
            ),
        ] {
            let q = EptViolation::from_raw(base | 1 << bit);
            assert_eq!(q.linear_address_attributes(advanced), Some(expected), "bit {bit}");
        }
        // Undefined without the capability, without bit 7 or without bit 8 (an access to a
        // paging-structure entry).
        let all = EptViolation::from_raw(0xF80);
        assert_eq!(all.linear_address_attributes(EptVpidCapabilities::empty()), None);
        let other_caps = EptVpidCapabilities::all().difference(advanced);
        assert_eq!(all.linear_address_attributes(other_caps), None);
        assert_eq!(EptViolation::from_raw(0xE80).linear_address_attributes(advanced), None);
        assert_eq!(EptViolation::from_raw(0xF00).linear_address_attributes(advanced), None);
        assert!(all.linear_address_attributes(EptVpidCapabilities::all()).is_some());
    }

    #[test]
    fn notify_bits_0_and_12() {
        for other in 0..64 {
            let q = Notify::from_raw(1 << other);
            assert_eq!(q.vm_context_invalid(), other == 0, "bit {other}");
            assert_eq!(q.nmi_unblocking_due_to_iret(), other == 12, "bit {other}");
            assert_eq!(q.raw(), 1 << other);
        }
        let both = Notify::from_raw(0x1001);
        assert!(both.vm_context_invalid() && both.nmi_unblocking_due_to_iret());
    }

    #[test]
    fn invalid_guest_state_codes_and_unknown_values_kept() {
        let code = |raw| InvalidGuestState::from_raw(raw).code();
        assert_eq!(code(0), EntryFailureCode::Default);
        assert_eq!(code(2), EntryFailureCode::PdpteLoad);
        assert_eq!(code(3), EntryFailureCode::NmiInjection);
        assert_eq!(code(4), EntryFailureCode::VmcsLinkPointer);
        for unknown in [1, 5, 6, 0x100, 1 << 32 | 2, u64::MAX] {
            assert_eq!(code(unknown), EntryFailureCode::Unknown(unknown), "{unknown:#x}");
        }
    }

    #[test]
    fn decode_picks_the_decoder_and_keeps_raw() {
        for raw in [0, 1, 0x1234_5678_9ABC_DEF0, u64::MAX] {
            for number in 0..=u16::MAX {
                let q = ExitQualification::decode(BasicExitReason::from_number(number), raw);
                assert_eq!(q.raw(), raw);
            }
        }
        assert!(matches!(
            ExitQualification::decode(BasicExitReason::EptViolation, 0),
            ExitQualification::EptViolation(_)
        ));
        assert!(matches!(
            ExitQualification::decode(BasicExitReason::Cpuid, 0),
            ExitQualification::Raw(0)
        ));
    }
}
