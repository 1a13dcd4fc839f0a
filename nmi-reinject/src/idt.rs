//! IDT-host assembly: call a handler through the IRET frame the CPU would have pushed, and
//! IRET-to-self (shared/FACTS.md section 2).

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

    #[test]
    fn iret_to_self_returns_to_the_next_instruction() {
        let before = std::hint::black_box(0x1234_u64);
        // SAFETY: an IRETQ to the same privilege level, stack and flags.
        unsafe { super::iret_to_self() };
        assert_eq!(std::hint::black_box(before), 0x1234);
    }
}
