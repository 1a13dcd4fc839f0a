//! FRED entry stubs: a 4 KiB-aligned entry page with the ring-3 entry at its base and the
//! ring-0 entry at +256 (IA32_FRED_CONFIG points at the page).
//!
//! Each stub saves the general registers below the frame the CPU pushed (as a
//! [`SavedRegisters`]), calls the dispatcher with the frame and the registers, restores the
//! registers (a dispatcher may change them, and the frame) and returns with ERETU (ring-3 entry)
//! or ERETS (ring-0 entry), which skip the error code and pop the rest of the frame.
//!
//! ```no_run
//! extern "C" fn dispatch(frame: &mut hvkit_fred::Frame, registers: &mut hvkit_fred::SavedRegisters) {
//!     // look at frame.ss.event_type(), frame.ss.vector(), ...
//! }
//! hvkit_fred::fred_entry_page!(pub HostEntry => dispatch);
//!
//! fn main() {
//!     let config = hvkit_fred::FredConfig::try_new(HostEntry::address(), 1, 0).unwrap();
//!     // wrmsr(IA32_FRED_CONFIG, config.raw()), then set CR4.FRED.
//! }
//! ```
//!
//! Verified here: the layout (page alignment, ring-0 entry at exactly +256, register offsets)
//! and, in user space, the save/dispatch/restore path of the ring-0 stub built with
//! [`fred_entry_page_emulated_return!`](crate::fred_entry_page_emulated_return). The final ERETS/ERETU of the real stubs has not run on
//! FRED hardware or an emulator in this project's CI.

use core::mem::{offset_of, size_of};

/// The general registers an entry stub saves below the FRED frame, lowest address first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(C)]
#[allow(missing_docs, reason = "one field per register, named after it")]
pub struct SavedRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

static_assertions::const_assert_eq!(size_of::<SavedRegisters>(), 120);
static_assertions::const_assert_eq!(offset_of!(SavedRegisters, rax), 0);
static_assertions::const_assert_eq!(offset_of!(SavedRegisters, rbp), 48);
static_assertions::const_assert_eq!(offset_of!(SavedRegisters, r15), 112);

/// The dispatcher a stub (or software delivery) calls.
pub type Dispatcher = extern "C" fn(&mut crate::Frame, &mut SavedRegisters);

/// Offset of the ring-0 entry from the entry page.
pub const KERNEL_ENTRY_OFFSET: u64 = 256;

/// Assembly: push the registers in [`SavedRegisters`] order (r15 first, so rax is lowest).
#[doc(hidden)]
#[macro_export]
macro_rules! __fred_push_registers {
    () => {
        "push r15\npush r14\npush r13\npush r12\npush r11\npush r10\npush r9\npush r8\n\
         push rbp\npush rdi\npush rsi\npush rdx\npush rcx\npush rbx\npush rax\n"
    };
}

/// Assembly: pop the registers pushed by `__fred_push_registers`.
#[doc(hidden)]
#[macro_export]
macro_rules! __fred_pop_registers {
    () => {
        "pop rax\npop rbx\npop rcx\npop rdx\npop rsi\npop rdi\npop rbp\npop r8\n\
         pop r9\npop r10\npop r11\npop r12\npop r13\npop r14\npop r15\n"
    };
}

/// Assembly: one stub body up to (not including) the return instruction. RSP points at the
/// FRED frame (its error code) on entry and again at the end: ERETS and ERETU skip the error
/// code themselves.
#[doc(hidden)]
#[macro_export]
macro_rules! __fred_stub_body {
    () => {
        concat!(
            $crate::__fred_push_registers!(),
            "lea rdi, [rsp + 120]\n",
            "mov rsi, rsp\n",
            "sub rsp, 8\n",
            "call {dispatcher}\n",
            "add rsp, 8\n",
            $crate::__fred_pop_registers!(),
        )
    };
}

/// Assembly: return as ERETS/ERETU would, without them (user-space tests): RIP, RFLAGS and RSP
/// from the frame at RSP (which points at the error code, as for ERETS). Does not unblock NMIs and does not change privilege.
#[doc(hidden)]
#[macro_export]
macro_rules! __fred_emulated_return {
    () => {
        "push qword ptr [rsp + 24]\npopfq\nmov r11, [rsp + 8]\nmov rsp, [rsp + 32]\njmp r11\n"
    };
}

/// Defines a FRED entry page: `fred_entry_page!(pub Name => dispatcher)` creates a type `Name`
/// whose `Name::address()` is the page to put in IA32_FRED_CONFIG. `dispatcher` is an
/// `extern "C" fn(&mut Frame, &mut SavedRegisters)`.
#[macro_export]
macro_rules! fred_entry_page {
    ($(#[$meta:meta])* $vis:vis $name:ident => $dispatcher:path) => {
        $crate::__fred_entry_page_with!($(#[$meta])* $vis $name => $dispatcher,
            $crate::__fred_eretu!(), $crate::__fred_erets!());
    };
}

/// As [`fred_entry_page!`], but both stubs end with an emulated return instead of ERETU/ERETS,
/// so the save/dispatch/restore path can run in user space. Never install it as a real entry
/// page: it neither unblocks NMIs nor changes privilege.
#[macro_export]
macro_rules! fred_entry_page_emulated_return {
    ($(#[$meta:meta])* $vis:vis $name:ident => $dispatcher:path) => {
        $crate::__fred_entry_page_with!($(#[$meta])* $vis $name => $dispatcher,
            $crate::__fred_emulated_return!(), $crate::__fred_emulated_return!());
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fred_erets {
    () => {
        ".byte 0xf2, 0x0f, 0x01, 0xca\n"
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fred_eretu {
    () => {
        ".byte 0xf3, 0x0f, 0x01, 0xca\n"
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fred_entry_page_with {
    ($(#[$meta:meta])* $vis:vis $name:ident => $dispatcher:path, $user_return:expr, $kernel_return:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;

        const _: $crate::Dispatcher = $dispatcher;

        ::core::arch::global_asm!(
            concat!(".pushsection .text.hvkit_fred_entry_", stringify!($name), ",\"ax\",@progbits\n"),
            ".p2align 12\n",
            concat!(".globl __hvkit_fred_entry_", stringify!($name), "\n"),
            concat!(".hidden __hvkit_fred_entry_", stringify!($name), "\n"),
            concat!("__hvkit_fred_entry_", stringify!($name), ":\n"),
            $crate::__fred_stub_body!(),
            $user_return,
            ".balign 256\n",
            $crate::__fred_stub_body!(),
            $kernel_return,
            ".popsection\n",
            dispatcher = sym $dispatcher,
        );

        impl $name {
            /// The entry page (4 KiB aligned): ring-3 entry here, ring-0 entry at +256.
            $vis fn address() -> u64 {
                let address: u64;
                // SAFETY: LEA of a label defined by this macro; no memory access.
                unsafe {
                    ::core::arch::asm!(
                        concat!("lea {0}, [rip + __hvkit_fred_entry_", stringify!($name), "]"),
                        out(reg) address,
                        options(nomem, nostack, preserves_flags),
                    );
                }
                address
            }

            /// The ring-0 entry (page + 256).
            $vis fn kernel_entry() -> u64 {
                Self::address() + $crate::entry::KERNEL_ENTRY_OFFSET
            }
        }
    };
}
