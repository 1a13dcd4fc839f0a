//! FRED (Flexible Return and Event Delivery) for x86-64 kernels and hypervisors: the stack
//! frame and its slots, MSRs and configuration, ERETS/ERETU/LKGS, entry stubs, and software
//! frame delivery for re-delivering NMIs and interrupts after VM exits.
//!
//! | item | what |
//! |---|---|
//! | [`Frame`], [`CsSlot`], [`SsSlot`], [`EventType`], [`event_data`] | the 64-byte frame, every slot field, reserved bits kept |
//! | [`config`] | MSR numbers, [`FredConfig`], [`StackLevels`], RSP/SSP alignment, CPUID/CR4 detection |
//! | [`instr`] | `erets`, `eretu`, `lkgs` (emitted as bytes, checked against the spec and LLVM) |
//! | [`fred_entry_page!`] | ring-3 entry at the page base, ring-0 entry at +256, saving [`SavedRegisters`] |
//! | [`deliver`](deliver::deliver) | build the frame the CPU would push, call the dispatcher, ERETS |
//!
//! # What ran where
//!
//! No FRED hardware or FRED emulator is available to this project's CI. There, layout and
//! encodings (frame offsets, slot bits, MSR values, instruction bytes, entry-page offsets) are
//! checked by host tests, and software delivery and the entry stubs' save/dispatch/restore path
//! run for real in user space with an emulated return in place of ERETS/ERETU.
//!
//! Outside CI, the example hypervisor's FRED host mode ran these paths for real (entry page at
//! ring 0, software delivery ending in ERETS, NMI-marked ERETS-to-self) in an upstream Bochs
//! build with FRED (cpu model `wildcat_lake`); `cargo xtask run --bochs PATH --cpu wildcat_lake`
//! repeats that with a Bochs you supply. That run found that ERETS/ERETU skip the error code
//! themselves (RSP must point at the frame, not at its RIP slot), which the stubs now do. ERETU
//! (a return to ring 3) has not been executed anywhere.
//!
//! # Example: the SS slot of a re-delivered NMI
//!
//! ```
//! use hvkit_fred::{EventType, SsSlot, deliver::SoftwareEvent};
//!
//! let event = SoftwareEvent::try_new(EventType::Nmi, 2)?;
//! let slot = SsSlot::from_raw(event.ss_slot_bits() | 0x18);
//! assert!(slot.nmi() && slot.long_mode());
//! assert_eq!(slot.vector(), 2);
//! assert!(SoftwareEvent::try_new(EventType::HardwareException, 14).is_err());
//! # Ok::<(), hvkit_fred::deliver::DeliveryError>(())
//! ```
//!
//! # Features
//!
//! - `defmt`: derives `defmt::Format` for the public types.
//!
//! `#![no_std]`, no allocation; minimum Rust 1.88. Assembly is `x86_64`-only.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod config;
pub mod deliver;
pub mod entry;
pub mod frame;
pub mod instr;

pub use config::{ConfigError, FredConfig, StackLevels};
pub use entry::{Dispatcher, SavedRegisters};
pub use frame::{CsSlot, EventType, Frame, SsSlot, event_data};

#[cfg(all(test, target_arch = "x86_64"))]
#[allow(clippy::unwrap_used, reason = "test code: a poisoned lock is a test failure")]
mod user_space_tests {
    use super::*;
    use crate::deliver::SoftwareEvent;
    use std::sync::Mutex;

    static LOCK: Mutex<()> = Mutex::new(());

    #[derive(Debug, Default, Clone, Copy)]
    struct Seen {
        frame: Frame,
        frame_address: u64,
        registers: SavedRegisters,
        registers_address: u64,
        calls: u32,
    }

    static SEEN: Mutex<Seen> = Mutex::new(Seen {
        frame: Frame {
            error_code: 0,
            rip: 0,
            cs: CsSlot::from_raw(0),
            rflags: 0,
            rsp: 0,
            ss: SsSlot::from_raw(0),
            event_data: 0,
            reserved: 0,
        },
        frame_address: 0,
        registers: SavedRegisters {
            rax: 0,
            rbx: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            rbp: 0,
            r8: 0,
            r9: 0,
            r10: 0,
            r11: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
        },
        registers_address: 0,
        calls: 0,
    });

    extern "C" fn record(frame: &mut Frame, registers: &mut SavedRegisters) {
        let mut seen = SEEN.lock().unwrap();
        seen.frame = *frame;
        seen.frame_address = frame as *mut Frame as u64;
        seen.registers = *registers;
        seen.registers_address = registers as *mut SavedRegisters as u64;
        seen.calls += 1;
        // Entry stubs restore registers from here: prove it with two changes.
        registers.rax = 0x1234;
        registers.rcx = 0x5678;
    }

    fn selectors() -> (u64, u64) {
        let (cs, ss): (u16, u16);
        // SAFETY: reading segment registers has no side effects.
        unsafe {
            core::arch::asm!("mov {0:x}, cs", "mov {1:x}, ss", out(reg) cs, out(reg) ss,
                options(nomem, nostack, preserves_flags));
        }
        (u64::from(cs), u64::from(ss))
    }

    /// What the delivery harness observed at the call.
    #[repr(C)]
    #[derive(Debug, Default)]
    struct CallSite {
        rsp: u64,
        rflags: u64,
        callee_saved_changed: u64,
    }

    core::arch::global_asm!(
        ".pushsection .text.hvkit_fred_test_deliver_harness,\"ax\",@progbits",
        "hvkit_fred_test_deliver_harness:",
        "push rbx", "push r12", "push r13", "push r14", "push r15", "push rbp",
        "push r8",
        "movabs rbx, 0x1111111111111111",
        "movabs r12, 0x2222222222222222",
        "movabs r13, 0x3333333333333333",
        "movabs r14, 0x4444444444444444",
        "movabs r15, 0x5555555555555555",
        "movabs rbp, 0x6666666666666666",
        "pushfq",
        "pop rax",
        "mov [r8 + 8], rax",
        "mov [r8], rsp",
        "call {deliver}",
        "pop rcx",
        "xor eax, eax",
        "movabs r8, 0x1111111111111111", "xor r8, rbx", "or rax, r8",
        "movabs r8, 0x2222222222222222", "xor r8, r12", "or rax, r8",
        "movabs r8, 0x3333333333333333", "xor r8, r13", "or rax, r8",
        "movabs r8, 0x4444444444444444", "xor r8, r14", "or rax, r8",
        "movabs r8, 0x5555555555555555", "xor r8, r15", "or rax, r8",
        "movabs r8, 0x6666666666666666", "xor r8, rbp", "or rax, r8",
        "mov [rcx + 16], rax",
        "pop rbp", "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx",
        "ret",
        ".popsection",
        deliver = sym crate::deliver::deliver_emulated,
    );

    unsafe extern "sysv64" {
        fn hvkit_fred_test_deliver_harness(
            ss_bits: u64,
            dispatcher: Dispatcher,
            red_zone: u64,
            event_data: u64,
            site: *mut CallSite,
        );
    }

    fn run_delivery(event: SoftwareEvent, red_zone: u64) -> (Seen, CallSite) {
        run_delivery_with_event_data(event, red_zone, 0)
    }

    fn run_delivery_with_event_data(
        event: SoftwareEvent,
        red_zone: u64,
        event_data: u64,
    ) -> (Seen, CallSite) {
        *SEEN.lock().unwrap() = Seen::default();
        let mut site = CallSite::default();
        let canary = [0xC0FF_EE00_u64; 32];
        let canary = std::hint::black_box(canary);
        // SAFETY: the harness preserves the ABI; the dispatcher leaves RIP/RSP/CS/SS alone.
        unsafe {
            hvkit_fred_test_deliver_harness(
                event.ss_slot_bits(),
                record,
                red_zone,
                event_data,
                &mut site,
            )
        };
        assert_eq!(std::hint::black_box(canary), [0xC0FF_EE00_u64; 32], "caller's stack intact");
        (*SEEN.lock().unwrap(), site)
    }

    #[test]
    fn software_delivery_carries_the_event_data() {
        let _guard = LOCK.lock().unwrap();
        // An NMI with NMI-source bits 1 and 5 (bitmap 0x22), and all-ones: the slot at +48
        // holds exactly what was given, the reserved slot above it stays 0.
        for event_data in [0x22, u64::MAX, 1 << 63] {
            let (seen, _) = run_delivery_with_event_data(SoftwareEvent::Nmi, 64, event_data);
            assert_eq!(seen.calls, 1);
            assert_eq!(seen.frame.event_data, event_data);
            assert_eq!(seen.frame.reserved, 0);
            assert_eq!(seen.frame.error_code, 0);
        }
    }

    #[test]
    fn software_delivery_builds_the_cpu_frame() {
        let _guard = LOCK.lock().unwrap();
        let (cs, ss) = selectors();
        for (event, red_zone) in [
            (SoftwareEvent::Nmi, 64),
            (SoftwareEvent::Nmi, 0),
            (SoftwareEvent::ExternalInterrupt(0xEC), 64),
            (SoftwareEvent::ExternalInterrupt(32), 128),
        ] {
            let (seen, site) = run_delivery(event, red_zone);
            let frame = seen.frame;
            assert_eq!(seen.calls, 1, "dispatcher ran exactly once");
            assert_eq!(site.callee_saved_changed, 0, "rbx, rbp, r12-r15 preserved");
            // RSP: the caller's RSP at the call, minus the return address and saved RBP.
            assert_eq!(frame.rsp, site.rsp - 16, "{event:?}");
            let expected_frame = ((frame.rsp - red_zone) & !63) - 64;
            assert_eq!(
                seen.frame_address, expected_frame,
                "{event:?}: below the red zone, 64-aligned"
            );
            assert_eq!(seen.frame_address % 64, 0);
            assert!(seen.frame_address + 64 <= frame.rsp - red_zone);
            assert_eq!(frame.rflags, site.rflags, "RFLAGS at entry");
            assert_eq!(frame.cs.raw(), cs, "CS selector, stack level 0");
            assert_eq!(frame.error_code, 0);
            assert_eq!(frame.event_data, 0);
            assert_eq!(frame.reserved, 0);
            let expected_ss = match event {
                SoftwareEvent::Nmi => ss | (1 << 18) | (2 << 32) | (2 << 48) | (1 << 57),
                SoftwareEvent::ExternalInterrupt(vector) => {
                    ss | (u64::from(vector) << 32) | (1 << 57)
                }
            };
            assert_eq!(frame.ss.raw(), expected_ss, "{event:?}");
            // RIP: the return label, followed by `pop rbp; ret`.
            // SAFETY: RIP points into this crate's code, readable.
            let code = unsafe { core::ptr::read(frame.rip as *const [u8; 2]) };
            assert_eq!(code, [0x5D, 0xC3]);
            // The saved registers sit right below the frame, with the harness's values.
            assert_eq!(seen.registers_address, seen.frame_address - 120);
            assert_eq!(seen.registers.rbx, 0x1111_1111_1111_1111);
            assert_eq!(seen.registers.r15, 0x5555_5555_5555_5555);
            assert_eq!(seen.registers.rdi, event.ss_slot_bits(), "first argument as it was");
            assert_eq!(seen.registers.rdx, red_zone);
        }
    }

    crate::fred_entry_page_emulated_return!(TestEntry => record);
    crate::fred_entry_page!(RealEntry => record);

    fn code(address: u64, length: usize) -> std::vec::Vec<u8> {
        // SAFETY: reading this crate's own machine code, which is mapped readable.
        unsafe { core::slice::from_raw_parts(address as *const u8, length) }.to_vec()
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|window| window == needle)
    }

    /// Regression (found under a FRED-capable Bochs): ERETS/ERETU skip the error code
    /// themselves, so the stubs must return with RSP at the frame: the instruction before
    /// ERETS/ERETU is the last register pop (`pop r15`), not `add rsp, 8`.
    #[test]
    fn real_stubs_return_with_rsp_at_the_error_code() {
        let user = code(RealEntry::address(), 256);
        let kernel = code(RealEntry::kernel_entry(), 256);
        for (stub, erex) in
            [(&user, [0xF3u8, 0x0F, 0x01, 0xCA]), (&kernel, [0xF2, 0x0F, 0x01, 0xCA])]
        {
            let at = find(stub, &erex).expect("return instruction in the stub");
            assert_eq!(&stub[at - 2..at], &[0x41, 0x5F], "pop r15 right before the return");
        }
    }

    /// Same regression for software delivery: after the dispatcher, only the alignment slot
    /// and the saved registers are dropped (`add rsp, 128`), then ERETS.
    #[test]
    fn software_delivery_returns_with_rsp_at_the_error_code() {
        let body = code(crate::deliver::deliver_erets_address(), 512);
        let at = find(&body, &[0xF2, 0x0F, 0x01, 0xCA]).expect("ERETS in deliver");
        assert_eq!(&body[at - 7..at], &[0x48, 0x81, 0xC4, 0x80, 0x00, 0x00, 0x00], "add rsp, 128");
    }

    static ENTRY: Mutex<u64> = Mutex::new(0);
    static mut ENTRY_SLOT: u64 = 0;

    core::arch::global_asm!(
        ".pushsection .text.hvkit_fred_test_stub_harness,\"ax\",@progbits",
        "hvkit_fred_test_stub_harness:",
        "push rbx", "push r12", "push r13", "push r14", "push r15", "push rbp",
        "push rsi",
        "mov [rip + {slot}], rdi",
        "mov rbp, rsp",
        // The frame the CPU would push for an external interrupt (vector 0x30) at level 0.
        "and rsp, -64",
        "push 0",
        "push 0x77",
        "xor eax, eax", "mov ax, ss", "movabs rcx, 0x0200003000000000", "or rax, rcx", "push rax",
        "push rbp",
        "pushfq",
        "xor eax, eax", "mov ax, cs", "push rax",
        "lea rax, [rip + 3f]", "push rax",
        "push 0x55",
        "movabs rax, 0xA0A0A0A0A0A0A0A0",
        "movabs rbx, 0xB0B0B0B0B0B0B0B0",
        "movabs rcx, 0xC0C0C0C0C0C0C0C0",
        "movabs rdx, 0xD0D0D0D0D0D0D0D0",
        "movabs rsi, 0x5151515151515151",
        "movabs rdi, 0xD1D1D1D1D1D1D1D1",
        "movabs r8, 0x0808080808080808",
        "movabs r9, 0x0909090909090909",
        "movabs r10, 0x1010101010101010",
        "movabs r12, 0x1212121212121212",
        "movabs r13, 0x1313131313131313",
        "movabs r14, 0x1414141414141414",
        "movabs r15, 0x1515151515151515",
        "jmp qword ptr [rip + {slot}]",
        "3:",
        "mov r11, [rsp]",
        "mov [r11 + 0], rax", "mov [r11 + 8], rbx", "mov [r11 + 16], rcx", "mov [r11 + 24], rdx",
        "mov [r11 + 32], rsi", "mov [r11 + 40], rdi", "mov [r11 + 48], rbp", "mov [r11 + 56], r8",
        "mov [r11 + 64], r9", "mov [r11 + 72], r10", "mov [r11 + 88], r12", "mov [r11 + 96], r13",
        "mov [r11 + 104], r14", "mov [r11 + 112], r15",
        "pop rsi",
        "pop rbp", "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx",
        "ret",
        ".popsection",
        slot = sym ENTRY_SLOT,
    );

    unsafe extern "sysv64" {
        fn hvkit_fred_test_stub_harness(entry: u64, after: *mut SavedRegisters);
    }

    #[test]
    fn entry_page_layout() {
        let page = TestEntry::address();
        assert_eq!(page % 4096, 0, "entry page is 4 KiB aligned");
        assert_eq!(TestEntry::kernel_entry(), page + 256, "ring-0 entry at +256");
        assert!(FredConfig::try_new(page, 1, 0).is_ok());
    }

    #[test]
    fn ring0_stub_saves_dispatches_and_restores() {
        let _guard = LOCK.lock().unwrap();
        *SEEN.lock().unwrap() = Seen::default();
        *ENTRY.lock().unwrap() = TestEntry::kernel_entry();
        let mut after = SavedRegisters::default();
        // SAFETY: the harness builds a frame and jumps to the stub, which returns through the
        // emulated return to the harness; the ABI is preserved.
        unsafe { hvkit_fred_test_stub_harness(TestEntry::kernel_entry(), &mut after) };
        let seen = *SEEN.lock().unwrap();
        assert_eq!(seen.calls, 1);
        assert_eq!(seen.frame_address % 64, 0);
        assert_eq!(seen.frame.error_code, 0x55);
        assert_eq!(seen.frame.event_data, 0x77);
        assert_eq!(seen.frame.ss.vector(), 0x30);
        assert_eq!(seen.registers_address, seen.frame_address - 120);
        let expected = SavedRegisters {
            rax: 0xA0A0_A0A0_A0A0_A0A0,
            rbx: 0xB0B0_B0B0_B0B0_B0B0,
            rcx: 0xC0C0_C0C0_C0C0_C0C0,
            rdx: 0xD0D0_D0D0_D0D0_D0D0,
            rsi: 0x5151_5151_5151_5151,
            rdi: 0xD1D1_D1D1_D1D1_D1D1,
            rbp: seen.frame.rsp,
            r8: 0x0808_0808_0808_0808,
            r9: 0x0909_0909_0909_0909,
            r10: 0x1010_1010_1010_1010,
            r11: seen.registers.r11,
            r12: 0x1212_1212_1212_1212,
            r13: 0x1313_1313_1313_1313,
            r14: 0x1414_1414_1414_1414,
            r15: 0x1515_1515_1515_1515,
        };
        assert_eq!(seen.registers, expected, "the dispatcher saw the interrupted registers");
        // After the return: the registers come from the saved area (rax and rcx were changed
        // by the dispatcher), except r11, which the emulated return uses.
        let mut restored = expected;
        restored.rax = 0x1234;
        restored.rcx = 0x5678;
        restored.r11 = after.r11;
        assert_eq!(after, restored);
    }
}
