//! The FRED stack frame and its CS and SS slots (Intel FRED specification, "Event Delivery").
#![forbid(unsafe_code)]

use core::mem::{align_of, offset_of, size_of};

/// FRED event types: the same numbers as VMX interruption types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EventType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 1: reserved (kept so a decoded value is never lost).
    Reserved,
    /// 2: NMI.
    Nmi,
    /// 3: hardware exception.
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event (vector 0 MTF, 1 SYSCALL, 2 SYSENTER).
    Other,
}

impl EventType {
    /// Decodes 3 bits (higher bits ignored).
    pub const fn from_bits(bits: u64) -> Self {
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

    /// The number.
    pub const fn bits(self) -> u64 {
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
}

/// Vectors of event type 7.
pub mod other_event {
    /// Monitor trap flag.
    pub const MTF: u8 = 0;
    /// SYSCALL.
    pub const SYSCALL: u8 = 1;
    /// SYSENTER.
    pub const SYSENTER: u8 = 2;
}

macro_rules! slot_bits {
    ($($(#[$doc:meta])* $getter:ident / $setter:ident: bool @ $bit:literal;)*) => {$(
        $(#[$doc])*
        pub const fn $getter(self) -> bool {
            self.0 & (1 << $bit) != 0
        }
        #[doc = concat!("With bit ", stringify!($bit), " set or clear.")]
        pub const fn $setter(self, on: bool) -> Self {
            Self(if on { self.0 | (1 << $bit) } else { self.0 & !(1 << $bit) })
        }
    )*};
}

/// The CS slot (frame +16): 15:0 selector, 17:16 stack level at the event, 18 WFE (IBT
/// wait-for-ENDBRANCH), 63:19 reserved. Bits 31:0 steer ERETS/ERETU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct CsSlot(u64);

impl CsSlot {
    /// Reserved bits 63:19.
    pub const RESERVED: u64 = !0x7_FFFF;

    /// A slot with `selector` and stack level `level` (taken modulo 4).
    pub const fn new(selector: u16, level: u8) -> Self {
        Self(selector as u64 | (((level & 3) as u64) << 16))
    }

    /// Any 64 bits, as found in a frame.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw slot.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Bits 15:0.
    pub const fn selector(self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }

    /// Bits 17:16.
    pub const fn stack_level(self) -> u8 {
        ((self.0 >> 16) & 3) as u8
    }

    /// With bits 17:16 set to `level` (modulo 4).
    pub const fn with_stack_level(self, level: u8) -> Self {
        Self((self.0 & !(3 << 16)) | (((level & 3) as u64) << 16))
    }

    /// Reserved bits found set.
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED
    }

    slot_bits! {
        /// Bit 18: WFE, the IBT tracker was in WAIT_FOR_ENDBRANCH.
        wait_for_endbranch / with_wait_for_endbranch: bool @ 18;
    }
}

/// The SS slot (frame +40): 15:0 selector, 16 STI blocking, 17 software-initiated event
/// (SYSCALL/SYSENTER/INT n), 18 NMI, 39:32 vector, 51:48 event type, 56 enclave, 57 64-bit mode,
/// 58 nested exception, 63:60 instruction length; other bits reserved. Bits 31:0 steer
/// ERETS/ERETU (the NMI bit decides whether ERETS unblocks NMIs); 63:32 are informational.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct SsSlot(u64);

impl SsSlot {
    /// Reserved bits: 31:19, 47:40, 55:52, 59.
    pub const RESERVED: u64 =
        0x0000_0000_FFF8_0000 | 0x0000_FF00_0000_0000 | 0x00F0_0000_0000_0000 | (1 << 59);

    /// A slot for an event of `event_type` with `vector` on a stack with `selector`, taken in
    /// 64-bit mode (bit 57), with the NMI bit set exactly when the event is an NMI.
    pub const fn new(selector: u16, event_type: EventType, vector: u8) -> Self {
        let nmi = matches!(event_type, EventType::Nmi);
        Self(selector as u64 | ((vector as u64) << 32) | (event_type.bits() << 48) | (1 << 57))
            .with_nmi(nmi)
    }

    /// Any 64 bits, as found in a frame.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw slot.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Bits 15:0.
    pub const fn selector(self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }

    /// Bits 39:32.
    pub const fn vector(self) -> u8 {
        ((self.0 >> 32) & 0xFF) as u8
    }

    /// With bits 39:32 = `vector`.
    pub const fn with_vector(self, vector: u8) -> Self {
        Self((self.0 & !(0xFF << 32)) | ((vector as u64) << 32))
    }

    /// Bits 51:48 (bit 51 is always 0 for defined types; it is kept in `raw`).
    pub const fn event_type(self) -> EventType {
        EventType::from_bits(self.0 >> 48)
    }

    /// With bits 51:48 = `event_type`.
    pub const fn with_event_type(self, event_type: EventType) -> Self {
        Self((self.0 & !(0xF << 48)) | (event_type.bits() << 48))
    }

    /// Bits 63:60.
    pub const fn instruction_length(self) -> u8 {
        (self.0 >> 60) as u8
    }

    /// With bits 63:60 = `length` (modulo 16).
    pub const fn with_instruction_length(self, length: u8) -> Self {
        Self((self.0 & !(0xF << 60)) | (((length & 0xF) as u64) << 60))
    }

    /// Reserved bits found set.
    pub const fn reserved_bits(self) -> u64 {
        self.0 & Self::RESERVED
    }

    slot_bits! {
        /// Bit 16: blocking by STI at the event.
        sti_blocking / with_sti_blocking: bool @ 16;
        /// Bit 17: software-initiated event (SYSCALL, SYSENTER, INT n).
        software_event / with_software_event: bool @ 17;
        /// Bit 18: the event was an NMI (ERETS with this bit set unblocks NMIs).
        nmi / with_nmi: bool @ 18;
        /// Bit 56: the event interrupted enclave mode.
        enclave / with_enclave: bool @ 56;
        /// Bit 57: the event happened in 64-bit mode.
        long_mode / with_long_mode: bool @ 57;
        /// Bit 58: nested exception (an exception during event delivery; not for #DF).
        nested / with_nested: bool @ 58;
    }
}

/// The 64-byte FRED stack frame, lowest address first. The CPU pushes it at a 64-byte aligned
/// address.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, align(64))]
pub struct Frame {
    /// +0: error code (0 for events without one).
    pub error_code: u64,
    /// +8: return RIP.
    pub rip: u64,
    /// +16: CS slot.
    pub cs: CsSlot,
    /// +24: RFLAGS.
    pub rflags: u64,
    /// +32: RSP at the event.
    pub rsp: u64,
    /// +40: SS slot.
    pub ss: SsSlot,
    /// +48: event data (#PF CR2, #DB pending debug, #NM XFD_ERR; else 0).
    pub event_data: u64,
    /// +56: reserved, 0.
    pub reserved: u64,
}

static_assertions::const_assert_eq!(size_of::<Frame>(), 64);
static_assertions::const_assert_eq!(align_of::<Frame>(), 64);
static_assertions::const_assert_eq!(offset_of!(Frame, error_code), 0);
static_assertions::const_assert_eq!(offset_of!(Frame, rip), 8);
static_assertions::const_assert_eq!(offset_of!(Frame, cs), 16);
static_assertions::const_assert_eq!(offset_of!(Frame, rflags), 24);
static_assertions::const_assert_eq!(offset_of!(Frame, rsp), 32);
static_assertions::const_assert_eq!(offset_of!(Frame, ss), 40);
static_assertions::const_assert_eq!(offset_of!(Frame, event_data), 48);
static_assertions::const_assert_eq!(offset_of!(Frame, reserved), 56);

/// Event-data helpers (FRED specification "Event Data").
pub mod event_data {
    /// The DR6 bits whose polarity is inverted in DR6 (reserved-as-1 bits).
    const DR6_INVERTED: u64 = 0xFFFF_0FF0;

    /// #PF: the event data is the faulting linear address (what CR2 would hold).
    pub const fn page_fault(cr2: u64) -> u64 {
        cr2
    }

    /// #DB: pending debug exceptions in positive polarity: DR6 XOR 0xFFFF0FF0.
    pub const fn debug_from_dr6(dr6: u64) -> u64 {
        dr6 ^ DR6_INVERTED
    }

    /// #DB: DR6 recovered from the event data (XOR 0xFFFF0FF0 again).
    pub const fn dr6_from_debug(event_data: u64) -> u64 {
        event_data ^ DR6_INVERTED
    }

    /// #NM: the event data is IA32_XFD_ERR.
    pub const fn device_not_available(xfd_err: u64) -> u64 {
        xfd_err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cs_slot_fields_alone() {
        assert_eq!(CsSlot::new(0x10, 0).raw(), 0x10);
        assert_eq!(CsSlot::new(0, 1).raw(), 1 << 16);
        assert_eq!(CsSlot::new(0, 3).raw(), 3 << 16);
        assert_eq!(CsSlot::default().with_wait_for_endbranch(true).raw(), 1 << 18);
        let slot = CsSlot::from_raw(0xFFFF_FFFF_FFFF_FFFF);
        assert_eq!(slot.selector(), 0xFFFF);
        assert_eq!(slot.stack_level(), 3);
        assert!(slot.wait_for_endbranch());
        assert_eq!(slot.reserved_bits(), 0xFFFF_FFFF_FFF8_0000);
        assert_eq!(slot.with_stack_level(1).raw(), 0xFFFF_FFFF_FFFD_FFFF, "reserved bits kept");
    }

    #[test]
    fn ss_slot_fields_alone() {
        let zero = SsSlot::from_raw(0);
        assert_eq!(zero.with_sti_blocking(true).raw(), 1 << 16);
        assert_eq!(zero.with_software_event(true).raw(), 1 << 17);
        assert_eq!(zero.with_nmi(true).raw(), 1 << 18);
        assert_eq!(zero.with_vector(0xAB).raw(), 0xAB << 32);
        assert_eq!(zero.with_event_type(EventType::Nmi).raw(), 2 << 48);
        assert_eq!(zero.with_event_type(EventType::Other).raw(), 7 << 48);
        assert_eq!(zero.with_enclave(true).raw(), 1 << 56);
        assert_eq!(zero.with_long_mode(true).raw(), 1 << 57);
        assert_eq!(zero.with_nested(true).raw(), 1 << 58);
        assert_eq!(zero.with_instruction_length(15).raw(), 0xF << 60);
        assert_eq!(SsSlot::from_raw(0x18).selector(), 0x18);
    }

    #[test]
    fn ss_slot_for_an_nmi_and_an_interrupt() {
        // NMI on kernel SS 0x18 in 64-bit mode: selector, NMI bit 18, vector 2, type 2, bit 57.
        assert_eq!(SsSlot::new(0x18, EventType::Nmi, 2).raw(), 0x0202_0002_0004_0018);
        assert_eq!(
            SsSlot::new(0x18, EventType::ExternalInterrupt, 0xEC).raw(),
            0x0200_00EC_0000_0018
        );
        let slot = SsSlot::new(0, EventType::Nmi, 2);
        assert!(slot.nmi() && slot.long_mode() && !slot.sti_blocking());
        assert_eq!(slot.event_type(), EventType::Nmi);
        assert_eq!(slot.vector(), 2);
        assert_eq!(slot.reserved_bits(), 0);
    }

    #[test]
    fn ss_slot_reserved_bits_are_kept_and_reported() {
        let all = SsSlot::from_raw(u64::MAX);
        assert_eq!(all.reserved_bits(), 0x08F0_FF00_FFF8_0000);
        assert_eq!(all.vector(), 0xFF);
        assert_eq!(all.instruction_length(), 15);
        assert_eq!(all.with_nmi(false).raw(), !(1 << 18));
        for bits in 0..8 {
            assert_eq!(EventType::from_bits(bits).bits(), bits);
        }
    }

    #[test]
    fn event_type_numbers() {
        let types = [
            EventType::ExternalInterrupt,
            EventType::Reserved,
            EventType::Nmi,
            EventType::HardwareException,
            EventType::SoftwareInterrupt,
            EventType::PrivilegedSoftwareException,
            EventType::SoftwareException,
            EventType::Other,
        ];
        for (number, event_type) in (0u64..).zip(types) {
            assert_eq!(EventType::from_bits(number), event_type);
            assert_eq!(EventType::from_bits(number | !7), event_type, "high bits ignored");
            assert_eq!(event_type.bits(), number);
        }
    }

    #[test]
    fn getters_take_only_their_field() {
        let cs = CsSlot::from_raw(0x0001_2345);
        assert_eq!(cs.selector(), 0x2345);
        assert_eq!(cs.stack_level(), 1);
        assert!(!cs.wait_for_endbranch());
        assert_eq!(cs.reserved_bits(), 0);
        assert_eq!(CsSlot::from_raw(1 << 19).reserved_bits(), 1 << 19);
        let ss = SsSlot::from_raw(0x5000_0042_0000_1234 | (3 << 48));
        assert_eq!(ss.selector(), 0x1234);
        assert_eq!(ss.vector(), 0x42);
        assert_eq!(ss.event_type(), EventType::HardwareException);
        assert_eq!(ss.instruction_length(), 5);
        assert_eq!(ss.reserved_bits(), 0);
        assert_eq!(SsSlot::from_raw(1 << 59).reserved_bits(), 1 << 59);
    }

    #[test]
    fn setters_from_all_ones_keep_every_other_bit() {
        let all = SsSlot::from_raw(u64::MAX);
        assert_eq!(all.with_vector(0xAB).raw(), !(0xFF << 32) | (0xAB << 32));
        assert_eq!(all.with_event_type(EventType::Nmi).raw(), !(0xF << 48) | (2 << 48));
        assert_eq!(all.with_instruction_length(5).raw(), !(0xF << 60) | (5 << 60));
        assert_eq!(all.with_instruction_length(0x15).instruction_length(), 5, "modulo 16");
        assert_eq!(SsSlot::from_raw(0).with_instruction_length(5).raw(), 5 << 60);
        let cs = CsSlot::from_raw(u64::MAX);
        assert_eq!(cs.with_stack_level(0).raw(), !(3 << 16));
        assert_eq!(cs.with_stack_level(2).raw(), !(1 << 16));
        assert_eq!(CsSlot::from_raw(0).with_stack_level(6).raw(), 2 << 16, "modulo 4");
        assert_eq!(cs.with_wait_for_endbranch(false).raw(), !(1 << 18));
        // Setting a value already there changes nothing.
        let slot = SsSlot::new(0x18, EventType::Nmi, 2);
        assert_eq!(slot.with_vector(2), slot);
        assert_eq!(slot.with_event_type(EventType::Nmi), slot);
        assert_eq!(slot.with_nmi(true), slot);
        assert_eq!(slot.with_long_mode(true), slot);
    }

    #[test]
    fn event_data_helpers() {
        // DR6 after a single-step with no breakpoints: 0xFFFF4FF0 -> BS (bit 14) only.
        assert_eq!(event_data::debug_from_dr6(0xFFFF_4FF0), 1 << 14);
        assert_eq!(event_data::dr6_from_debug(1 << 14), 0xFFFF_4FF0);
        // B0 hit: DR6 0xFFFF0FF1 -> 1.
        assert_eq!(event_data::debug_from_dr6(0xFFFF_0FF1), 1);
        assert_eq!(event_data::page_fault(0xDEAD_B000), 0xDEAD_B000);
        assert_eq!(event_data::device_not_available(1 << 18), 1 << 18);
        // Every bit of the inverted range flips, every other bit passes through.
        assert_eq!(event_data::dr6_from_debug(u64::MAX), 0xFFFF_FFFF_0000_F00F);
        assert_eq!(event_data::debug_from_dr6(u64::MAX), 0xFFFF_FFFF_0000_F00F);
        assert_eq!(event_data::dr6_from_debug(0), 0xFFFF_0FF0);
    }
}
