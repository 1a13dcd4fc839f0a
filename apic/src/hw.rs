//! Real register access: MMIO for xAPIC, RDMSR/WRMSR for x2APIC.

use crate::register as reg;
use crate::xapic::XApicRegisters;
use core::ptr::NonNull;
use volatile::VolatilePtr;

/// An MSR that the local-APIC code reads and writes: an x2APIC register (MSRs 0x800-0x8FF,
/// SDM Vol. 3A "x2APIC Register Address Space") or IA32_TSC_DEADLINE (0x6E0).
///
/// Only these can be named, so no safe call reaches any other MSR (IA32_LSTAR, EFER, ...).
/// IA32_APIC_BASE is not among them: it can move the xAPIC page, so writing it is
/// [`MsrAccess::write_apic_base`], which is `unsafe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ApicMsr(u32);

impl ApicMsr {
    /// IA32_TSC_DEADLINE (0x6E0).
    pub const TSC_DEADLINE: Self = Self(reg::IA32_TSC_DEADLINE);
    /// The x2APIC ICR (0x830).
    pub const ICR: Self = Self(reg::X2APIC_ICR);
    /// The x2APIC SELF IPI register (0x83F).
    pub const SELF_IPI: Self = Self(reg::X2APIC_SELF_IPI);

    /// The x2APIC MSR of the register at xAPIC `offset` (0x800 + offset / 16; bits of
    /// `offset` outside 0xFF0 are ignored, as the register page is 4 KiB of 16-byte registers).
    pub const fn x2apic_register(offset: u32) -> Self {
        Self(reg::x2apic_msr(offset & 0xFF0))
    }

    /// `msr` if it is one of these MSRs.
    pub const fn new(msr: u32) -> Option<Self> {
        match msr {
            reg::IA32_TSC_DEADLINE | 0x800..=0x8FF => Some(Self(msr)),
            _ => None,
        }
    }

    /// The MSR number.
    pub const fn number(self) -> u32 {
        self.0
    }
}

/// MSR access for the local-APIC code: IA32_APIC_BASE, the x2APIC registers and
/// IA32_TSC_DEADLINE, and nothing else.
///
/// # Why the writes are safe
///
/// [`write_msr`](Self::write_msr) reaches only [`ApicMsr`]s: they change this processor's
/// local-APIC state (priorities, timers, EOI, IPIs). None of that changes memory the Rust program
/// can observe, so a safe call cannot break memory safety; what an IPI does to the processor
/// that receives it (an INIT resets it) is the sender's policy, as for any IPI. The one APIC MSR
/// that can invalidate memory assumptions, IA32_APIC_BASE (it relocates the xAPIC page that an
/// [`XApic`](crate::XApic) handle may be using), is written only through the `unsafe`
/// [`write_apic_base`](Self::write_apic_base).
pub trait MsrAccess {
    /// Reads IA32_APIC_BASE (MSR 0x1B).
    fn read_apic_base(&self) -> u64;

    /// Writes IA32_APIC_BASE (MSR 0x1B).
    ///
    /// # Safety
    ///
    /// `value` keeps the APIC's base address (bits 51:12) and is a valid mode transition (SDM
    /// Vol. 3A "x2APIC State Transitions"), or no code uses the xAPIC page at the old or the new
    /// address while the new value is in force.
    unsafe fn write_apic_base(&mut self, value: u64);

    /// RDMSR of `msr`.
    fn read_msr(&self, msr: ApicMsr) -> u64;

    /// WRMSR of `msr`.
    fn write_msr(&mut self, msr: ApicMsr, value: u64);
}

/// RDMSR/WRMSR on this processor, for the MSRs [`MsrAccess`] can name.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct HardwareMsrs {
    _per_cpu: core::marker::PhantomData<*mut ()>,
}

#[cfg(target_arch = "x86_64")]
impl HardwareMsrs {
    /// MSR access on this processor.
    ///
    /// # Safety
    ///
    /// CPL 0. The x2APIC MSRs exist only in x2APIC mode and IA32_TSC_DEADLINE only when CPUID
    /// offers it: the caller accesses them only then ([`X2Apic`](crate::X2Apic) checks the mode
    /// before it touches a register).
    pub const unsafe fn new() -> Self {
        Self { _per_cpu: core::marker::PhantomData }
    }
}

#[cfg(target_arch = "x86_64")]
impl MsrAccess for HardwareMsrs {
    fn read_apic_base(&self) -> u64 {
        // SAFETY: CPL 0 is the constructor's contract; IA32_APIC_BASE exists on every
        // processor with a local APIC.
        unsafe { x86::msr::rdmsr(reg::IA32_APIC_BASE) }
    }

    unsafe fn write_apic_base(&mut self, value: u64) {
        // SAFETY: CPL 0 is the constructor's contract; the value is the caller's.
        unsafe { x86::msr::wrmsr(reg::IA32_APIC_BASE, value) }
    }

    fn read_msr(&self, msr: ApicMsr) -> u64 {
        // SAFETY: CPL 0 and the MSR's existence are the constructor's contract; `ApicMsr`
        // names only local-APIC MSRs.
        unsafe { x86::msr::rdmsr(msr.number()) }
    }

    fn write_msr(&mut self, msr: ApicMsr, value: u64) {
        // SAFETY: as above; writing a local-APIC register does not change memory (see the
        // trait's documentation).
        unsafe { x86::msr::wrmsr(msr.number(), value) }
    }
}

/// The xAPIC register page, accessed with volatile 32-bit loads and stores.
#[derive(Debug)]
pub struct MmioRegisters {
    base: NonNull<u32>,
}

impl MmioRegisters {
    /// The register page mapped at `base` (uncached, 4 KiB).
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of this processor's xAPIC page (IA32_APIC_BASE), mapped
    /// uncacheable and valid for as long as the value lives; nothing else writes it concurrently
    /// on this processor.
    pub const unsafe fn new(base: NonNull<u32>) -> Self {
        Self { base }
    }

    fn register(&self, offset: u32) -> VolatilePtr<'_, u32> {
        let index = (offset & 0xFF0) as usize / 4;
        // SAFETY: `offset & 0xFF0` stays within the 4 KiB page the constructor vouched for, and
        // is 16-byte aligned like every APIC register.
        unsafe { VolatilePtr::new(self.base.add(index)) }
    }
}

impl XApicRegisters for MmioRegisters {
    fn read(&self, offset: u32) -> u32 {
        self.register(offset).read()
    }

    fn write(&mut self, offset: u32, value: u32) {
        self.register(offset).write(value);
    }
}

#[cfg(test)]
mod tests {
    use super::ApicMsr;

    #[test]
    fn apic_msr_names_only_local_apic_msrs() {
        // x2APIC range 0x800-0x8FF and IA32_TSC_DEADLINE, both ends of the range.
        for msr in [0x800, 0x802, 0x830, 0x83F, 0x8FF, 0x6E0] {
            assert_eq!(ApicMsr::new(msr).map(ApicMsr::number), Some(msr), "{msr:#x}");
        }
        // Neighbours of the range, IA32_APIC_BASE (unsafe path only), IA32_LSTAR, EFER.
        for msr in [0x7FF, 0x900, 0x6DF, 0x6E1, 0x1B, 0xC000_0082, 0xC000_0080, 0] {
            assert_eq!(ApicMsr::new(msr), None, "{msr:#x}");
        }
    }

    #[test]
    fn x2apic_register_stays_in_the_x2apic_range() {
        assert_eq!(ApicMsr::x2apic_register(0x300).number(), 0x830);
        assert_eq!(ApicMsr::x2apic_register(0x3F0).number(), 0x83F);
        assert_eq!(ApicMsr::x2apic_register(0xFF0).number(), 0x8FF);
        // Offsets beyond the 4 KiB page or inside a register wrap to the page's registers.
        assert_eq!(ApicMsr::x2apic_register(0x1300).number(), 0x830);
        assert_eq!(ApicMsr::x2apic_register(0x30C).number(), 0x830);
        assert_eq!(ApicMsr::ICR.number(), 0x830);
        assert_eq!(ApicMsr::SELF_IPI.number(), 0x83F);
        assert_eq!(ApicMsr::TSC_DEADLINE.number(), 0x6E0);
    }
}
