//! IDT-host assembly: call a handler through the IRET frame the CPU would have pushed, and
//! IRET-to-self; typed entry addresses and the entry-stub macro.

/// The frame the processor pushes when it delivers an interrupt or NMI in 64-bit mode without
/// an error code (SDM Vol. 3A 6.14.2 "64-Bit Mode Stack Frame"), lowest address first, and the
/// frame [`IdtDirectCall`](crate::IdtDirectCall) builds for a direct call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(C)]
pub struct InterruptFrame {
    /// Where IRETQ returns to.
    pub rip: u64,
    /// The code-segment selector (bits 15:0) of the interrupted context.
    pub cs: u64,
    /// The interrupted context's RFLAGS.
    pub rflags: u64,
    /// The interrupted context's RSP.
    pub rsp: u64,
    /// The stack-segment selector (bits 15:0) of the interrupted context.
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<InterruptFrame>() == 40);
const _: () = assert!(core::mem::offset_of!(InterruptFrame, cs) == 8);
const _: () = assert!(core::mem::offset_of!(InterruptFrame, rsp) == 24);
const _: () = assert!(core::mem::offset_of!(InterruptFrame, ss) == 32);

/// The address of an interrupt entry that both a host IDT gate and the direct call
/// ([`IdtDirectCall`](crate::IdtDirectCall)) may use.
///
/// # The direct-call contract
///
/// The direct call enters the entry the way the processor delivers an interrupt in 64-bit mode
/// at CPL 0 without IST (SDM Vol. 3A 6.14.2): with interrupts disabled, on the caller's stack,
/// RSP aligned down to 16, then SS, the caller's RSP, RFLAGS and CS pushed and the entry
/// CALLed (which pushes the return RIP): an [`InterruptFrame`] at RSP, no error code. The
/// entry must:
///
/// 1. preserve every general register and end with IRETQ (which returns right after the CALL
///    and, for an NMI, unblocks NMIs);
/// 2. run on the stack it is entered on: for NMIs, a dedicated non-IST entry, not the IDT's NMI
///    gate if that gate switches to an IST stack (a direct call would run it on the wrong
///    stack; Linux fixed exactly this bug in commit a217a6593cec);
/// 3. expect the RFLAGS image to carry the caller's system flags (IF = 0) and arbitrary
///    arithmetic flags.
///
/// [`idt_entry_stub!`](crate::idt_entry_stub) makes such an entry around a Rust handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(transparent)]
pub struct IdtEntry(u64);

impl IdtEntry {
    /// The entry at `entry`.
    ///
    /// # Safety
    ///
    /// `entry` meets the direct-call contract (see the type's documentation).
    pub unsafe fn from_fn(entry: unsafe extern "C" fn()) -> Self {
        Self(entry as usize as u64)
    }

    /// The entry at `address`.
    ///
    /// # Safety
    ///
    /// `address` is the address of code that meets the direct-call contract.
    pub const unsafe fn from_address(address: u64) -> Self {
        Self(address)
    }

    /// The entry's address (for an IDT gate).
    pub const fn address(self) -> u64 {
        self.0
    }
}

/// Defines `fn $name() -> IdtEntry`: an interrupt entry stub around `$handler`, an
/// `extern "C" fn(&InterruptFrame)`, that meets the direct-call contract of [`IdtEntry`] and
/// can also be installed in an IDT gate (without IST for the direct-call NMI entry).
///
/// The stub saves the nine caller-saved general registers (RAX, RCX, RDX, RSI, RDI, R8-R11),
/// clears DF, calls the handler with a pointer to the [`InterruptFrame`] (the stack is 16-byte
/// aligned at the call, as the ABI requires), restores the registers and executes IRETQ. It
/// does not save SIMD or x87 state: the handler must not use it (the `x86_64-unknown-none`
/// target is soft-float) or must save it itself. Not for exceptions that push an error code.
///
/// ```no_run
/// # #[cfg(target_arch = "x86_64")] {
/// use hvkit_nmi_reinject::{InterruptFrame, idt_entry_stub};
///
/// extern "C" fn host_nmi(_frame: &InterruptFrame) {
///     // count it, run the host's NMI work ...
/// }
///
/// idt_entry_stub! {
///     /// The dedicated non-IST NMI entry for the direct call.
///     pub fn nmi_entry => host_nmi
/// }
///
/// let entry = nmi_entry();
/// let _gate_address = entry.address();
/// # }
/// ```
#[macro_export]
macro_rules! idt_entry_stub {
    ($(#[$meta:meta])* $vis:vis fn $name:ident => $handler:path) => {
        $(#[$meta])*
        $vis fn $name() -> $crate::IdtEntry {
            const _: extern "C" fn(&$crate::InterruptFrame) = $handler;
            #[unsafe(naked)]
            unsafe extern "C" fn stub() {
                ::core::arch::naked_asm!(
                    "push rax",
                    "push rcx",
                    "push rdx",
                    "push rsi",
                    "push rdi",
                    "push r8",
                    "push r9",
                    "push r10",
                    "push r11",
                    "lea rdi, [rsp + 72]",
                    "cld",
                    "call {handler}",
                    "pop r11",
                    "pop r10",
                    "pop r9",
                    "pop r8",
                    "pop rdi",
                    "pop rsi",
                    "pop rdx",
                    "pop rcx",
                    "pop rax",
                    "iretq",
                    handler = sym $handler,
                )
            }
            // SAFETY: the stub preserves every general register (the nine caller-saved ones
            // are saved around the call, the handler preserves the rest by the ABI), calls the
            // handler with RSP 16-byte aligned (40-byte frame + 72 bytes of saves above a
            // 16-aligned base), stays on its stack and ends with IRETQ.
            unsafe { $crate::IdtEntry::from_fn(stub) }
        }
    };
}

/// Calls `handler` as if an interrupt had arrived: aligns RSP to 16, pushes SS, the old RSP,
/// RFLAGS and CS, and CALLs the handler (which pushes the return RIP) - the frame the processor
/// pushes for an interrupt in 64-bit mode (SDM Vol. 3A 6.14.2 "64-Bit Mode Stack Frame"). The
/// handler's IRETQ returns right after the call; the old stack is then restored.
///
/// `cs` and `ss` are the current code and stack selectors, read once by the caller (they do
/// not change while the host runs), so the stub is 8 instructions up to the CALL. RFLAGS is
/// pushed after the alignment, so its arithmetic flags (CF, PF, AF, ZF, SF, OF) are those the
/// AND left; the system flags (IF among them) are the caller's.
///
/// # Safety
///
/// `handler` is an interrupt entry that preserves every register and ends with IRETQ, safe on
/// the current stack; interrupts are disabled; `cs`/`ss` are the current selectors.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
pub(crate) unsafe extern "sysv64" fn call_with_iret_frame(handler: u64, cs: u64, ss: u64) {
    core::arch::naked_asm!(
        "push rbp",
        "mov rbp, rsp",
        "and rsp, -16",
        "push rdx",
        // The old RSP as the frame's RSP: the caller's, minus the return address and RBP.
        "push rbp",
        "pushfq",
        "push rsi",
        "call rdi",
        "mov rsp, rbp",
        "pop rbp",
        "ret",
    )
}

/// The current CS and SS selectors, zero-extended.
#[cfg(target_arch = "x86_64")]
pub(crate) fn current_selectors() -> (u64, u64) {
    let (cs, ss): (u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", "mov {1:x}, ss", out(reg) cs, out(reg) ss,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(cs), u64::from(ss))
}

/// IRETQ to the next instruction with the current SS, RSP, RFLAGS and CS: unblocks NMIs.
///
/// # Safety
///
/// IDT host; interrupts disabled; a pending NMI is taken right after the IRETQ.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
pub(crate) unsafe extern "sysv64" fn iret_to_self() {
    core::arch::naked_asm!(
        "mov rdx, rsp",
        "xor eax, eax",
        "mov ax, ss",
        "push rax",
        "push rdx",
        "pushfq",
        "xor eax, eax",
        "mov ax, cs",
        "push rax",
        "lea rax, [rip + 2f]",
        "push rax",
        "iretq",
        "2:",
        "ret",
    )
}

#[cfg(all(test, target_arch = "x86_64"))]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    /// What the test handler saw: RIP, CS, RFLAGS, RSP, SS, frame address, calls.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct Record {
        rip: u64,
        cs: u64,
        rflags: u64,
        rsp: u64,
        ss: u64,
        frame: u64,
        calls: u64,
    }

    static mut RECORD: Record =
        Record { rip: 0, cs: 0, rflags: 0, rsp: 0, ss: 0, frame: 0, calls: 0 };
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    core::arch::global_asm!(
        ".pushsection .text.hvkit_nmi_test_idt,\"ax\",@progbits",
        "hvkit_nmi_test_handler:",
        "push rax",
        "push rcx",
        "lea rcx, [rip + {record}]",
        "mov rax, [rsp + 16]", "mov [rcx], rax",
        "mov rax, [rsp + 24]", "mov [rcx + 8], rax",
        "mov rax, [rsp + 32]", "mov [rcx + 16], rax",
        "mov rax, [rsp + 40]", "mov [rcx + 24], rax",
        "mov rax, [rsp + 48]", "mov [rcx + 32], rax",
        "lea rax, [rsp + 16]", "mov [rcx + 40], rax",
        "inc qword ptr [rcx + 48]",
        // Clobber-check material: a handler must preserve registers; this one does.
        "pop rcx",
        "pop rax",
        "iretq",
        // Harness: rdi = site pointer. Records RSP and RFLAGS at the call, sets callee-saved
        // registers, calls the direct-call path, and reports whether they survived.
        "hvkit_nmi_test_harness:",
        "push rbx", "push r12", "push r13", "push r14", "push r15", "push rbp",
        "push rdi",
        "movabs rbx, 0x1111111111111111",
        "movabs r12, 0x2222222222222222",
        "movabs r13, 0x3333333333333333",
        "movabs r14, 0x4444444444444444",
        "movabs r15, 0x5555555555555555",
        "movabs rbp, 0x6666666666666666",
        "mov rcx, rdi",
        "lea rdi, [rip + hvkit_nmi_test_handler]",
        "xor esi, esi",
        "mov si, cs",
        "xor edx, edx",
        "mov dx, ss",
        "pushfq",
        "pop rax",
        "mov [rcx + 8], rax",
        "mov [rcx], rsp",
        "call {call}",
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
        record = sym RECORD,
        call = sym super::call_with_iret_frame,
    );

    #[repr(C)]
    #[derive(Debug, Default)]
    struct Site {
        rsp: u64,
        rflags: u64,
        callee_saved_changed: u64,
    }

    unsafe extern "sysv64" {
        fn hvkit_nmi_test_harness(site: *mut Site);
    }

    fn selectors() -> (u64, u64) {
        super::current_selectors()
    }

    /// RFLAGS bits other than the arithmetic flags CF, PF, AF, ZF, SF, OF.
    const SYSTEM_FLAGS: u64 = !0x8D5;

    #[test]
    fn direct_call_pushes_the_cpu_iret_frame_and_returns_intact() {
        let _guard = LOCK.lock().unwrap();
        // SAFETY: serialized by LOCK; plain data.
        unsafe { RECORD = Record::default() };
        let canary = std::hint::black_box([0xA5A5_A5A5_u64; 16]);
        let mut site = Site::default();
        // SAFETY: the harness and handler preserve the ABI and IRETQ to the same privilege.
        unsafe { hvkit_nmi_test_harness(&mut site) };
        assert_eq!(std::hint::black_box(canary), [0xA5A5_A5A5_u64; 16]);
        // SAFETY: serialized by LOCK.
        let record = unsafe { RECORD };
        let (cs, ss) = selectors();
        assert_eq!(record.calls, 1, "handler ran exactly once");
        assert_eq!(site.callee_saved_changed, 0, "rbx, rbp, r12-r15 intact");
        // RSP slot: the caller's RSP minus the return address and the saved RBP.
        assert_eq!(record.rsp, site.rsp - 16);
        // The CPU aligns RSP to 16 before pushing SS: SS slot at aligned - 8, RIP at - 40.
        let aligned = record.rsp & !15;
        assert_eq!(record.frame, aligned - 40);
        assert_eq!(record.ss, ss);
        assert_eq!(record.cs, cs);
        assert_eq!(record.rflags & SYSTEM_FLAGS, site.rflags & SYSTEM_FLAGS);
        assert_ne!(record.rflags & 0x200, 0, "IF as at the call (user space runs with IF=1)");
        // RIP: right after the CALL: `mov rsp, rbp; pop rbp; ret`.
        // SAFETY: RIP points into this crate's code.
        let code = unsafe { core::ptr::read(record.rip as *const [u8; 5]) };
        assert_eq!(code, [0x48, 0x89, 0xEC, 0x5D, 0xC3]);
    }

    #[test]
    fn direct_call_stub_is_eight_instructions_up_to_the_call() {
        // push rbp; mov rbp,rsp; and rsp,-16; push rdx; push rbp; pushfq; push rsi; call rdi
        let expected: [u8; 16] = [
            0x55, 0x48, 0x89, 0xE5, 0x48, 0x83, 0xE4, 0xF0, 0x52, 0x55, 0x9C, 0x56, 0xFF, 0xD7,
            0x48, 0x89,
        ];
        // SAFETY: the stub's first 16 bytes are code in this crate.
        let code = unsafe { core::ptr::read(super::call_with_iret_frame as *const [u8; 16]) };
        assert_eq!(code, expected);
    }

    static STUB_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static STUB_FRAME: [std::sync::atomic::AtomicU64; 5] =
        [const { std::sync::atomic::AtomicU64::new(0) }; 5];

    extern "C" fn stub_handler(frame: &super::InterruptFrame) {
        use std::sync::atomic::Ordering::SeqCst;
        STUB_CALLS.fetch_add(1, SeqCst);
        STUB_FRAME[0].store(frame.rip, SeqCst);
        STUB_FRAME[1].store(frame.cs, SeqCst);
        STUB_FRAME[2].store(frame.rflags, SeqCst);
        STUB_FRAME[3].store(frame.rsp, SeqCst);
        STUB_FRAME[4].store(frame.ss, SeqCst);
    }

    crate::idt_entry_stub! {
        /// The stub under test.
        fn test_entry => stub_handler
    }

    core::arch::global_asm!(
        ".pushsection .text.hvkit_nmi_test_stub,\"ax\",@progbits",
        // rdi = entry. Builds the interrupt frame by hand, sets every caller-saved register to
        // a pattern, calls the entry and returns 0 when all came back unchanged.
        "hvkit_nmi_test_stub_harness:",
        "push rbx",
        "push rbp",
        "mov rbp, rsp",
        "mov rbx, rdi",
        "and rsp, -16",
        "xor eax, eax",
        "mov ax, ss",
        "push rax",
        "push rbp",
        "pushfq",
        "xor eax, eax",
        "mov ax, cs",
        "push rax",
        "mov eax, 1",
        "mov ecx, 2",
        "mov edx, 3",
        "mov esi, 4",
        "mov edi, 5",
        "mov r8d, 6",
        "mov r9d, 7",
        "mov r10d, 8",
        "mov r11d, 9",
        "call rbx",
        "mov rbx, rax",
        "xor rbx, 1",
        "xor rcx, 2",
        "or rbx, rcx",
        "xor rdx, 3",
        "or rbx, rdx",
        "xor rsi, 4",
        "or rbx, rsi",
        "xor rdi, 5",
        "or rbx, rdi",
        "xor r8, 6",
        "or rbx, r8",
        "xor r9, 7",
        "or rbx, r9",
        "xor r10, 8",
        "or rbx, r10",
        "xor r11, 9",
        "or rbx, r11",
        "mov rax, rbx",
        // IRETQ restored RSP to the pushed value (rbp).
        "mov rcx, rsp",
        "xor rcx, rbp",
        "or rax, rcx",
        "pop rbp",
        "pop rbx",
        "ret",
        ".popsection",
    );

    unsafe extern "sysv64" {
        fn hvkit_nmi_test_stub_harness(entry: u64) -> u64;
    }

    #[test]
    fn entry_stub_preserves_every_register_and_passes_the_frame() {
        let _guard = LOCK.lock().unwrap();
        use std::sync::atomic::Ordering::SeqCst;
        let before = STUB_CALLS.load(SeqCst);
        let entry = test_entry();
        // SAFETY: the harness builds a same-privilege interrupt frame; the stub ends in IRETQ.
        let changed = unsafe { hvkit_nmi_test_stub_harness(entry.address()) };
        assert_eq!(changed, 0, "caller-saved registers and RSP intact");
        assert_eq!(STUB_CALLS.load(SeqCst), before + 1, "handler ran once");
        let (cs, ss) = selectors();
        assert_eq!(STUB_FRAME[1].load(SeqCst), cs);
        assert_eq!(STUB_FRAME[4].load(SeqCst), ss);
        assert_ne!(STUB_FRAME[0].load(SeqCst), 0, "return RIP passed");
        assert_eq!(STUB_FRAME[3].load(SeqCst) % 8, 0, "the harness's RSP");
    }

    #[test]
    fn entry_stub_is_callable_by_the_direct_call() {
        let _guard = LOCK.lock().unwrap();
        use std::sync::atomic::Ordering::SeqCst;
        let before = STUB_CALLS.load(SeqCst);
        let (cs, ss) = selectors();
        // SAFETY: the stub meets the direct-call contract; same privilege level.
        unsafe { super::call_with_iret_frame(test_entry().address(), cs, ss) };
        assert_eq!(STUB_CALLS.load(SeqCst), before + 1);
        assert_eq!(STUB_FRAME[1].load(SeqCst), cs);
    }

    #[test]
    fn iret_to_self_returns_to_the_next_instruction() {
        let before = std::hint::black_box(0x1234_u64);
        // SAFETY: an IRETQ to the same privilege level, stack and flags.
        unsafe { super::iret_to_self() };
        assert_eq!(std::hint::black_box(before), 0x1234);
    }
}
