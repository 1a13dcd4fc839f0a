//! Real register access: MMIO for xAPIC, RDMSR/WRMSR for x2APIC.

use crate::xapic::XApicRegisters;
use core::ptr::NonNull;
use volatile::VolatilePtr;

/// MSR access (x2APIC registers, IA32_APIC_BASE, IA32_TSC_DEADLINE).
pub trait MsrAccess {
    /// RDMSR.
    fn read_msr(&self, msr: u32) -> u64;
    /// WRMSR.
    fn write_msr(&mut self, msr: u32, value: u64);
}

/// RDMSR/WRMSR on this processor.
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
    /// CPL 0, and the caller accesses only MSRs that exist (the APIC code here uses the x2APIC
    /// MSRs only in x2APIC mode, IA32_APIC_BASE, and IA32_TSC_DEADLINE only when CPUID offers it).
    pub const unsafe fn new() -> Self {
        Self { _per_cpu: core::marker::PhantomData }
    }
}

#[cfg(target_arch = "x86_64")]
impl MsrAccess for HardwareMsrs {
    fn read_msr(&self, msr: u32) -> u64 {
        // SAFETY: CPL 0 and MSR existence are the constructor's contract.
        unsafe { x86::msr::rdmsr(msr) }
    }

    fn write_msr(&mut self, msr: u32, value: u64) {
        // SAFETY: as above; the APIC code writes only architectural values.
        unsafe { x86::msr::wrmsr(msr, value) }
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
