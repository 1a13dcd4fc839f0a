//! The guest: Rust code in the same image, run in VMX non-root operation with its own stack and
//! IDT inside a 2 MiB area that EPT maps with 4 KiB pages (so the hypervisor can take single
//! pages away for the IDT-vectoring and IRET scenarios).

use crate::memory::HwCell;
use core::sync::atomic::{AtomicU64, Ordering};

/// Hypercall numbers (VMCALL with RAX = command, RBX/RCX = arguments; results in RAX/RBX).
pub mod call {
    /// Guest finished.
    pub const DONE: u64 = 0;
    /// Returns RBX + 1 in RBX.
    pub const PING: u64 = 1;
    /// Scenario 1 result: RBX = checked round trips, RCX = mismatches.
    pub const ROUND_TRIPS_END: u64 = 2;
    /// Starts the host timer.
    pub const TIMER_START: u64 = 3;
    /// RAX = 1 once the host has handled enough timer interrupts.
    pub const TIMER_POLL: u64 = 4;
    /// Stops the host timer; scenario 2 ends.
    pub const TIMER_STOP: u64 = 5;
    /// Host-NMI phase begins; RBX = strategy (0 direct call, 1 self-NMI).
    pub const NMI_BEGIN: u64 = 6;
    /// Host-NMI phase ends; RBX = NMIs the guest sent.
    pub const NMI_END: u64 = 7;
    /// Queue RBX virtual NMIs for the guest.
    pub const FORWARD_NMIS: u64 = 8;
    /// Scenario 4 ends; RBX = guest NMI handler runs, RCX = nested runs.
    pub const FORWARD_END: u64 = 9;
    /// Made from inside the guest NMI handler (NMIs blocked).
    pub const IN_NMI_HANDLER: u64 = 10;
    /// Scenario 5: take the guest IDT page away and queue interrupt 0x40.
    pub const VECTORING_ARM: u64 = 11;
    /// Scenario 5 ends; RBX = guest 0x40 handler runs.
    pub const VECTORING_END: u64 = 12;
    /// Scenario 6 begins: queue one virtual NMI.
    pub const IRET_BEGIN: u64 = 13;
    /// From the NMI handler: take the stack page away and queue a second NMI.
    pub const UNMAP_STACK: u64 = 14;
    /// Scenario 6 ends; RBX = NMI handler runs, RCX = nested runs.
    pub const IRET_END: u64 = 15;
    /// Stress phase begins; RBX = strategy.
    pub const STRESS_BEGIN: u64 = 16;
    /// Stress phase ends; RBX = NMIs sent.
    pub const STRESS_END: u64 = 17;
    /// Switch the host to FRED; RAX = 1 when it did (then the timer and NMI scenarios repeat).
    pub const FRED_BEGIN: u64 = 18;
    /// Exception-reflection scenario begins.
    pub const REFLECT_BEGIN: u64 = 19;
    /// Exception-reflection scenario ends; RBX = guest #DB handler runs, RCX = runs that found
    /// DR6.BS set after a single step.
    pub const REFLECT_END: u64 = 20;
    /// Sends that gave up because the ICR stayed busy; RBX = count (reported, never sent).
    pub const NMI_SEND_TIMEOUTS: u64 = 21;
    /// FRED host: the guest wrote IA32_FRED_CONFIG; RBX = the value it read back.
    pub const FRED_MSR_CHECK: u64 = 22;
    /// The host sends itself NMIs with distinct sources (or reports why it cannot).
    pub const NMI_SOURCE: u64 = 23;
}

/// The guest's 2 MiB area: IDT (page 0), stack (pages 1-15).
#[repr(C, align(2097152))]
pub struct GuestArea {
    idt: [u64; 512],
    stack: [u8; 15 * 4096],
    rest: [u8; 2097152 - 16 * 4096],
}

/// The guest area.
pub static AREA: HwCell<GuestArea> =
    HwCell::new(GuestArea { idt: [0; 512], stack: [0; 15 * 4096], rest: [0; 2097152 - 16 * 4096] });

/// Guest NMI handler runs.
pub static GUEST_NMI_COUNT: AtomicU64 = AtomicU64::new(0);
/// Guest NMI handler runs that interrupted the handler before its IRET completed.
pub static GUEST_NMI_NESTED: AtomicU64 = AtomicU64::new(0);
/// A VMCALL command the next NMI handler run issues (then clears).
pub static GUEST_NMI_ACTION: AtomicU64 = AtomicU64::new(0);
/// Guest handler runs for vector 0x40.
pub static GUEST_IRQ_COUNT: AtomicU64 = AtomicU64::new(0);
/// Guest #DB handler runs.
pub static GUEST_DB_COUNT: AtomicU64 = AtomicU64::new(0);
/// Guest #DB handler runs that found DR6.BS (bit 14) set: a single step reflected with its DR6.
pub static GUEST_DB_SINGLE_STEP: AtomicU64 = AtomicU64::new(0);
/// Self-NMIs not sent because the ICR stayed busy.
static NMI_SEND_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
static GUEST_SAVED_RAX: AtomicU64 = AtomicU64::new(0);
static GUEST_SAVED_RBX: AtomicU64 = AtomicU64::new(0);

/// The guest interrupt vector used by scenario 5.
pub const GUEST_IRQ_VECTOR: u8 = 0x40;

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
    .global guest_nmi_entry
guest_nmi_entry:
    mov [rip + {saved_rax}], rax
    mov [rip + {saved_rbx}], rbx
    lea rax, [rip + guest_nmi_iret]
    cmp [rsp], rax
    jne 1f
    lock inc qword ptr [rip + {nested}]
1:
    lock inc qword ptr [rip + {count}]
    xor eax, eax
    xchg rax, [rip + {action}]
    test rax, rax
    jz 2f
    vmcall
2:
    mov rax, [rip + {saved_rax}]
    mov rbx, [rip + {saved_rbx}]
    .global guest_nmi_iret
guest_nmi_iret:
    iretq

    .balign 16
    .global guest_irq_entry
guest_irq_entry:
    lock inc qword ptr [rip + {irq_count}]
    iretq

    .balign 16
    .global guest_db_entry
guest_db_entry:
    push rax
    lock inc qword ptr [rip + {db_count}]
    mov rax, dr6
    test eax, 0x4000
    jz 3f
    lock inc qword ptr [rip + {db_single_step}]
    and eax, 0xFFFFBFFF
    mov dr6, rax
3:
    and qword ptr [rsp + 24], 0xFFFFFFFFFFFFFEFF
    pop rax
    iretq

    .balign 16
    .global guest_fault_entry
guest_fault_entry:
    mov eax, 0xDEAD
    vmcall
    hlt
    jmp guest_fault_entry
"#,
    saved_rax = sym GUEST_SAVED_RAX,
    saved_rbx = sym GUEST_SAVED_RBX,
    nested = sym GUEST_NMI_NESTED,
    count = sym GUEST_NMI_COUNT,
    action = sym GUEST_NMI_ACTION,
    irq_count = sym GUEST_IRQ_COUNT,
    db_count = sym GUEST_DB_COUNT,
    db_single_step = sym GUEST_DB_SINGLE_STEP,
);

unsafe extern "C" {
    fn guest_nmi_entry();
    fn guest_irq_entry();
    fn guest_db_entry();
    fn guest_fault_entry();
}

/// Base of the guest area.
pub fn area() -> u64 {
    AREA.address()
}

/// The guest IDT (first page of the area).
pub fn idt() -> u64 {
    area()
}

/// Top of the guest stack.
pub fn stack_top() -> u64 {
    area() + 16 * 4096
}

/// Fills the guest IDT: every vector faults to the hypervisor except #DB, NMI and 0x40.
pub fn init() {
    // SAFETY: the bootstrap processor, once, before any guest runs (the APs' guests, which
    // point their IDTR here too, start later).
    let table = unsafe { &mut (*AREA.get()).idt };
    for vector in 0..256usize {
        let handler = match vector {
            1 => guest_db_entry as *const () as u64,
            2 => guest_nmi_entry as *const () as u64,
            0x40 => guest_irq_entry as *const () as u64,
            _ => guest_fault_entry as *const () as u64,
        };
        let (low, high) = crate::host::gate(handler);
        table[vector * 2] = low;
        table[vector * 2 + 1] = high;
    }
}

/// A hypercall.
pub fn vmcall(command: u64, first: u64, second: u64) -> (u64, u64) {
    let (result, extra): (u64, u64);
    // SAFETY: VMCALL exits to the hypervisor, which sets RAX and RBX.
    unsafe {
        core::arch::asm!("xchg rbx, {b}", "vmcall", "xchg rbx, {b}",
            b = inout(reg) first => extra, inout("rax") command => result, in("rcx") second,
            options(nostack));
    }
    (result, extra)
}

fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    #[allow(unused_unsafe, reason = "__cpuid_count is unsafe on older compilers")]
    // SAFETY: CPUID exits to the hypervisor, which emulates it.
    let result = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    (result.eax, result.ebx, result.ecx, result.edx)
}

/// The CPUID leaf the hypervisor answers with computed values.
pub const CPUID_LEAF: u32 = 0x4000_0001;

/// Sends an NMI to this CPU through the xAPIC ICR, after waiting (bounded) for the previous
/// IPI to leave the ICR. `false` when the ICR stayed busy: then nothing was sent (writing the
/// ICR while a send is pending is undefined, SDM Vol. 3A "Interrupt Command Register").
fn send_self_nmi(apic: u64, apic_id: u32) -> bool {
    let high = (apic + 0x310) as *mut u32;
    let low = (apic + 0x300) as *mut u32;
    // SAFETY: the APIC page is mapped through EPT; these are the ICR registers.
    unsafe {
        for _ in 0..10_000 {
            if low.read_volatile() & (1 << 12) == 0 {
                high.write_volatile(apic_id << 24);
                low.write_volatile(0x4400);
                return true;
            }
        }
    }
    NMI_SEND_TIMEOUTS.fetch_add(1, Ordering::SeqCst);
    false
}

/// The exception-reflection scenario's guest half: `INT1` (ICEBP) and single steps, each a #DB
/// the hypervisor intercepts (#DB is always in its exception bitmap) and reflects back here.
fn reflection_scenario() {
    vmcall(call::REFLECT_BEGIN, 0, 0);
    for _ in 0..REFLECTED_EACH {
        // SAFETY: INT1 raises #DB, which the hypervisor reflects to guest_db_entry.
        unsafe { core::arch::asm!(".byte 0xF1", options(nomem, nostack)) };
        // SAFETY: TF set for one instruction: the single-step #DB is reflected to
        // guest_db_entry, which clears TF in the frame it returns through.
        unsafe {
            core::arch::asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", options(nomem))
        };
    }
    vmcall(
        call::REFLECT_END,
        GUEST_DB_COUNT.load(Ordering::SeqCst),
        GUEST_DB_SINGLE_STEP.load(Ordering::SeqCst),
    );
}

/// INT1s and single steps each in the exception-reflection scenario.
pub const REFLECTED_EACH: u64 = 50;

/// Scenario 2's guest half: keep running while the host timer fires.
fn timer_scenario() {
    vmcall(call::TIMER_START, 0, 0);
    while vmcall(call::TIMER_POLL, 0, 0).0 == 0 {
        for _ in 0..200 {
            core::hint::spin_loop();
        }
    }
    vmcall(call::TIMER_STOP, 0, 0);
}

/// Scenario 3's guest half: 200 self-NMIs through the physical APIC, per strategy.
fn host_nmi_scenarios(apic: u64, apic_id: u32) {
    for strategy in 0..2u64 {
        vmcall(call::NMI_BEGIN, strategy, 0);
        let mut sent = 0;
        for _ in 0..200 {
            sent += u64::from(send_self_nmi(apic, apic_id));
        }
        vmcall(call::NMI_END, sent, 0);
    }
}

/// The guest program: the guest half of every scenario, in order.
pub extern "C" fn main(apic: u64, apic_id: u32) -> ! {
    // Scenario 1: CPUID and VMCALL round trips, checked here.
    let (mut checked, mut mismatches) = (0u64, 0u64);
    for round in 0..1000u32 {
        let (a, b, c, d) = cpuid(CPUID_LEAF, round);
        if a == round.wrapping_mul(3).wrapping_add(1)
            && b == 0x6876_6B74
            && c == !round
            && d == 0x1234_5678
        {
            checked += 1;
        } else {
            mismatches += 1;
        }
        let (_, echoed) = vmcall(call::PING, u64::from(round), 0);
        if echoed == u64::from(round) + 1 {
            checked += 1;
        } else {
            mismatches += 1;
        }
    }
    vmcall(call::ROUND_TRIPS_END, checked, mismatches);

    // Scenario 2: host timer interrupts while the guest runs.
    timer_scenario();

    // Scenario 3: host NMIs while the guest runs, each strategy.
    host_nmi_scenarios(apic, apic_id);

    // Scenario 4: virtual NMIs forwarded while the guest blocks NMIs.
    let start = GUEST_NMI_COUNT.load(Ordering::SeqCst);
    let nested_start = GUEST_NMI_NESTED.load(Ordering::SeqCst);
    GUEST_NMI_ACTION.store(call::IN_NMI_HANDLER, Ordering::SeqCst);
    vmcall(call::FORWARD_NMIS, 3, 0);
    for _ in 0..1_000_000 {
        // Three NMIs at once latch into two (one delivered, one pending).
        if GUEST_NMI_COUNT.load(Ordering::SeqCst) - start >= 2 {
            break;
        }
        core::hint::spin_loop();
    }
    vmcall(
        call::FORWARD_END,
        GUEST_NMI_COUNT.load(Ordering::SeqCst) - start,
        GUEST_NMI_NESTED.load(Ordering::SeqCst) - nested_start,
    );

    // Scenario 5: an event whose delivery hits an EPT violation on the guest IDT.
    vmcall(call::VECTORING_ARM, 0, 0);
    for _ in 0..10_000 {
        core::hint::spin_loop();
    }
    vmcall(call::VECTORING_END, GUEST_IRQ_COUNT.load(Ordering::SeqCst), 0);

    // Scenario 6: an EPT violation on the NMI handler's IRET.
    let start = GUEST_NMI_COUNT.load(Ordering::SeqCst);
    let nested_start = GUEST_NMI_NESTED.load(Ordering::SeqCst);
    GUEST_NMI_ACTION.store(call::UNMAP_STACK, Ordering::SeqCst);
    vmcall(call::IRET_BEGIN, 0, 0);
    for _ in 0..1_000_000 {
        if GUEST_NMI_COUNT.load(Ordering::SeqCst) - start >= 2 {
            break;
        }
        core::hint::spin_loop();
    }
    vmcall(
        call::IRET_END,
        GUEST_NMI_COUNT.load(Ordering::SeqCst) - start,
        GUEST_NMI_NESTED.load(Ordering::SeqCst) - nested_start,
    );

    // Scenario 7: stress, each strategy: NMIs, timer interrupts and exits mixed.
    for strategy in 0..2u64 {
        vmcall(call::STRESS_BEGIN, strategy, 0);
        let mut sent = 0;
        for round in 0..3400u32 {
            sent += u64::from(send_self_nmi(apic, apic_id));
            let _ = cpuid(CPUID_LEAF, round);
            let _ = vmcall(call::PING, 0, 0);
        }
        vmcall(call::STRESS_END, sent, 0);
    }

    // Scenario 8: guest exceptions the hypervisor always intercepts, reflected back.
    reflection_scenario();
    vmcall(call::NMI_SEND_TIMEOUTS, NMI_SEND_TIMEOUTS.load(Ordering::SeqCst), 0);

    // Scenario 9: on a FRED host, scenarios 2 and 3 again through the FRED paths.
    if vmcall(call::FRED_BEGIN, 0, 0).0 == 1 {
        vmcall(call::FRED_MSR_CHECK, crate::fred_host::guest_fred_msr_probe(), 0);
        timer_scenario();
        host_nmi_scenarios(apic, apic_id);
    }
    vmcall(call::NMI_SOURCE, 0, 0);

    loop {
        vmcall(call::DONE, 0, 0);
    }
}
