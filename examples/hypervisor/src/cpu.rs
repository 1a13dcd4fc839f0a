//! RDTSC (not privileged here: CR4.TSD is clear) and the FRED MSR writes; every other
//! privileged instruction is an unsafe call into the `x86` crate at its use.

/// RDTSC.
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDTSC has no side effects.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
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
