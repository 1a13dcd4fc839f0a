//! The few privileged instructions the example needs outside the hvkit crates.

/// RDTSC.
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDTSC has no side effects.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// RDMSR of an MSR this kernel knows exists (IA32_APIC_BASE, IA32_FEATURE_CONTROL, ...).
pub fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: CPL 0; callers read only architectural MSRs that exist on this CPU.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// WRMSR of an MSR this kernel knows exists (IA32_FEATURE_CONTROL while unlocked, FRED MSRs when
/// CPUID reports FRED).
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: CPL 0; callers write only MSRs that exist, with architectural values.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags))
    };
}

/// MOV from DR6.
///
/// # Safety
///
/// CPL 0.
pub unsafe fn read_dr6() -> u64 {
    let value: u64;
    // SAFETY: CPL 0 is the caller's contract; reading DR6 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, dr6", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// MOV to DR6.
///
/// # Safety
///
/// CPL 0, and nothing on the host relies on DR6's value (here DR6 belongs to the guest).
pub unsafe fn write_dr6(value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("mov dr6, {}", in(reg) value, options(nomem, nostack, preserves_flags))
    };
}

/// MOV to CR2.
///
/// # Safety
///
/// CPL 0, and no host page-fault handler is between this write and the VM entry that gives
/// CR2 to the guest.
pub unsafe fn write_cr2(value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("mov cr2, {}", in(reg) value, options(nomem, nostack, preserves_flags))
    };
}
