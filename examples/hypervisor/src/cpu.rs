//! RDTSC (not privileged here: CR4.TSD is clear) and a CR4 read-modify-write; every privileged
//! instruction is an unsafe call into the `x86` crate.

/// RDTSC.
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDTSC has no side effects.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// Reads CR4, writes `change(CR4)` and returns the value written (through the `x86` crate).
///
/// # Safety
///
/// CPL 0, and the new value must be valid for this processor (no reserved bit set, features
/// it enables supported and set up).
pub unsafe fn write_cr4(change: impl FnOnce(u64) -> u64) -> u64 {
    use x86::controlregs::{Cr4, cr4, cr4_write};
    // SAFETY: the caller's contract.
    unsafe {
        let value = change(cr4().bits() as u64);
        cr4_write(Cr4::from_bits_unchecked(value as usize));
        value
    }
}
