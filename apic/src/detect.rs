//! Finding out which APIC mode is on (IA32_APIC_BASE, CPUID.1:ECX).

use crate::icr::Mode;

/// CPUID leaf 1 ECX bits this crate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CpuidFeatures {
    /// CPUID.1:ECX\[21\]: x2APIC supported.
    pub x2apic: bool,
    /// CPUID.1:ECX\[24\]: TSC-deadline timer mode supported.
    pub tsc_deadline: bool,
}

impl CpuidFeatures {
    /// Decodes CPUID.1:ECX.
    pub const fn from_leaf1_ecx(ecx: u32) -> Self {
        Self { x2apic: ecx & (1 << 21) != 0, tsc_deadline: ecx & (1 << 24) != 0 }
    }

    /// Reads CPUID leaf 1 on this processor.
    #[cfg(target_arch = "x86_64")]
    pub fn read() -> Self {
        // SAFETY: CPUID is available on every x86_64 processor and has no side effects.
        #[allow(unused_unsafe, reason = "`__cpuid` is an unsafe fn on older supported compilers")]
        let leaf = unsafe { core::arch::x86_64::__cpuid(1) };
        Self::from_leaf1_ecx(leaf.ecx)
    }
}

/// IA32_APIC_BASE (MSR 0x1B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ApicBase(pub u64);

impl ApicBase {
    /// Bit 8: this is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// Bit 10: x2APIC mode enable.
    pub const X2APIC_ENABLE: u64 = 1 << 10;
    /// Bit 11: APIC global enable.
    pub const GLOBAL_ENABLE: u64 = 1 << 11;

    /// Bit 8.
    pub const fn is_bsp(self) -> bool {
        self.0 & Self::BSP != 0
    }

    /// The physical base address of the xAPIC page (bits 51:12).
    pub const fn base_address(self) -> u64 {
        self.0 & 0x000F_FFFF_FFFF_F000
    }

    /// The mode the bits say is on.
    pub const fn state(self) -> ApicState {
        match (self.0 & Self::GLOBAL_ENABLE != 0, self.0 & Self::X2APIC_ENABLE != 0) {
            (true, true) => ApicState::Enabled(Mode::X2Apic),
            (true, false) => ApicState::Enabled(Mode::XApic),
            (false, false) => ApicState::Disabled,
            (false, true) => ApicState::Invalid,
        }
    }

    /// The value that switches to x2APIC mode (from xAPIC mode; SDM "x2APIC State
    /// Transitions": enable bit 10 with bit 11 already set).
    pub const fn x2apic_enabling_value(self) -> u64 {
        self.0 | Self::GLOBAL_ENABLE | Self::X2APIC_ENABLE
    }
}

/// What IA32_APIC_BASE says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ApicState {
    /// Globally disabled.
    Disabled,
    /// Enabled in a mode.
    Enabled(Mode),
    /// x2APIC enable without global enable: an invalid state.
    Invalid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_bits() {
        // A typical BSP value: base 0xFEE00000, enabled, BSP.
        let base = ApicBase(0xFEE0_0900);
        assert!(base.is_bsp());
        assert_eq!(base.base_address(), 0xFEE0_0000);
        assert_eq!(base.state(), ApicState::Enabled(Mode::XApic));
        assert_eq!(ApicBase(0xFEE0_0D00).state(), ApicState::Enabled(Mode::X2Apic));
        assert_eq!(ApicBase(0xFEE0_0000).state(), ApicState::Disabled);
        assert_eq!(ApicBase(0xFEE0_0400).state(), ApicState::Invalid);
        assert_eq!(base.x2apic_enabling_value(), 0xFEE0_0D00);
        let cpuid = CpuidFeatures::from_leaf1_ecx((1 << 21) | (1 << 24));
        assert!(cpuid.x2apic && cpuid.tsc_deadline);
        let none = CpuidFeatures::from_leaf1_ecx(!((1 << 21) | (1 << 24)));
        assert!(!none.x2apic && !none.tsc_deadline);
    }
}
