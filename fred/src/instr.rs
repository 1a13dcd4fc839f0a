//! ERETS, ERETU and LKGS. The instructions are emitted as bytes (Intel FRED specification,
//! instruction reference for ERETS, ERETU and LKGS) so that any assembler accepts them; a test
//! checks the bytes against
//! both the specification and LLVM's own encoding of the mnemonics.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(
        unused_macros,
        unused_imports,
        reason = "the byte encodings are used by x86_64 assembly only"
    )
)]

/// ERETS: F2 0F 01 CA.
macro_rules! erets_bytes {
    () => {
        ".byte 0xf2, 0x0f, 0x01, 0xca"
    };
}
/// ERETU: F3 0F 01 CA.
macro_rules! eretu_bytes {
    () => {
        ".byte 0xf3, 0x0f, 0x01, 0xca"
    };
}
/// LKGS ax: F2 0F 00 /6 with ModRM 0xF0 (mod 11, reg 110, rm 000 = AX).
macro_rules! lkgs_ax_bytes {
    () => {
        ".byte 0xf2, 0x0f, 0x00, 0xf0"
    };
}
pub(crate) use erets_bytes;

/// ERETS: returns to supervisor mode through the FRED frame at RSP: it skips the error code at
/// RSP and pops RIP, the CS slot, RFLAGS, RSP and the SS slot. Unblocks NMIs when the SS slot's
/// NMI bit is set.
///
/// # Safety
///
/// CR4.FRED = 1, CPL 0, and RSP points at a valid FRED frame (error code, RIP, CS slot, RFLAGS,
/// RSP, SS slot) for a supervisor-mode context.
#[cfg(target_arch = "x86_64")]
pub unsafe fn erets() -> ! {
    // SAFETY: the caller provides the frame; ERETS does not return here.
    unsafe { core::arch::asm!(erets_bytes!(), options(noreturn)) }
}

/// ERETU: returns to user mode through the FRED frame at RSP (error code skipped, as for
/// [`erets`]).
///
/// # Safety
///
/// As for [`erets`], for a user-mode context.
#[cfg(target_arch = "x86_64")]
pub unsafe fn eretu() -> ! {
    // SAFETY: the caller provides the frame; ERETU does not return here.
    unsafe { core::arch::asm!(eretu_bytes!(), options(noreturn)) }
}

/// LKGS: loads `selector` into GS, writing the descriptor base into IA32_KERNEL_GS_BASE
/// instead of the GS base (FRED's replacement for the SWAPGS dance).
///
/// # Safety
///
/// CPL 0 on a processor with LKGS (CPUID.(7,1):EAX\[18\]); `selector` must be loadable into GS.
#[cfg(target_arch = "x86_64")]
pub unsafe fn lkgs(selector: u16) {
    // SAFETY: the caller guarantees CPL 0 and a loadable selector.
    unsafe {
        core::arch::asm!(lkgs_ax_bytes!(), in("ax") selector, options(nostack, preserves_flags))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    core::arch::global_asm!(
        ".pushsection .rodata.hvkit_fred_test_bytes,\"a\"",
        ".globl hvkit_fred_test_our_bytes",
        "hvkit_fred_test_our_bytes:",
        erets_bytes!(),
        eretu_bytes!(),
        lkgs_ax_bytes!(),
        ".globl hvkit_fred_test_llvm_bytes",
        "hvkit_fred_test_llvm_bytes:",
        "erets",
        "eretu",
        "lkgs ax",
        ".popsection",
    );

    unsafe extern "C" {
        static hvkit_fred_test_our_bytes: [u8; 12];
        static hvkit_fred_test_llvm_bytes: [u8; 12];
    }

    #[test]
    fn encodings_match_the_specification_and_the_assembler() {
        let facts = [0xF2, 0x0F, 0x01, 0xCA, 0xF3, 0x0F, 0x01, 0xCA, 0xF2, 0x0F, 0x00, 0xF0];
        // SAFETY: both symbols are 12 bytes of read-only data defined above.
        let (ours, llvm) = unsafe { (hvkit_fred_test_our_bytes, hvkit_fred_test_llvm_bytes) };
        assert_eq!(ours, facts);
        assert_eq!(llvm, facts);
    }
}
