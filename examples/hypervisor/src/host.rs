//! Host GDT/TSS/IDT and the host's own interrupt handlers (which count what they handle).

use crate::println;
use core::sync::atomic::{AtomicU64, Ordering};

/// Host NMI handler runs.
pub static HOST_NMI_HANDLED: AtomicU64 = AtomicU64::new(0);
/// TSC at the host NMI handler's first instructions (last run).
pub static HOST_NMI_TSC: AtomicU64 = AtomicU64::new(0);
/// Host timer handler runs.
pub static HOST_TIMER_HANDLED: AtomicU64 = AtomicU64::new(0);
/// EOIs the host timer handler sent.
pub static HOST_TIMER_EOIS: AtomicU64 = AtomicU64::new(0);
/// TSC at the host timer handler's first instructions (last run).
pub static HOST_TIMER_TSC: AtomicU64 = AtomicU64::new(0);

/// The host timer vector.
pub const TIMER_VECTOR: u8 = 0x30;
/// The host vector of the fixed IPIs the SMP scenarios send: priority class 5 (vector bits
/// 7:4, SDM Vol. 3A 12.8.3 "Interrupt, Task, and Processor Priority"), above the timer's class 3.
pub const TEST_IPI_VECTOR: u8 = 0x50;
/// The storm's fixed IPIs: vector `STORM_VECTOR_BASE + sender index` (one vector per sender,
/// so IPIs from different senders never share an IRR bit), priority class 6.
pub const STORM_VECTOR_BASE: u8 = 0x60;
/// The host vector that wakes an idle (halted) CPU for a command.
pub const WAKE_VECTOR: u8 = 0x51;
/// The host spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
    .global host_nmi_entry
host_nmi_entry:
    push rax
    push rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [rip + {nmi_tsc}], rax
    lock inc qword ptr [rip + {nmi_count}]
    lock inc qword ptr gs:[{nmi_per_cpu}]
    cmp qword ptr gs:[{nmi_hold}], 0
    jne 2f
1:
    pop rdx
    pop rax
    iretq
2:
    /* Held (the pending-nmi scenario): say so, wait until released, NMIs stay blocked. */
    mov qword ptr gs:[{nmi_held}], 1
3:
    pause
    cmp qword ptr gs:[{nmi_hold}], 0
    jne 3b
    mov qword ptr gs:[{nmi_held}], 0
    jmp 1b

    .balign 16
    .global host_timer_entry
host_timer_entry:
    push rax
    push rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [rip + {timer_tsc}], rax
    push rcx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rax, rsp
    and rsp, -16
    push rax
    push rax
    call {timer}
    pop rax
    mov rsp, rax
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rcx
    pop rdx
    pop rax
    iretq

    .balign 16
    .global host_spurious_entry
host_spurious_entry:
    iretq

    .balign 16
host_exception_common:
    /* [rsp] = vector, [rsp+8] = error code or RIP */
    mov rdi, [rsp]
    lea rsi, [rsp + 8]
    and rsp, -16
    call {exception}
    ud2
"#,
    nmi_tsc = sym HOST_NMI_TSC,
    nmi_count = sym HOST_NMI_HANDLED,
    nmi_per_cpu = const crate::percpu::offset::NMI_HANDLED,
    nmi_hold = const crate::percpu::offset::NMI_HOLD,
    nmi_held = const crate::percpu::offset::NMI_HELD,
    timer_tsc = sym HOST_TIMER_TSC,
    timer = sym host_timer,
    exception = sym host_exception,
);

macro_rules! exception_stubs {
    ($($vector:literal),*) => {
        core::arch::global_asm!(
            $(
                concat!(".balign 16\nhost_exception_", stringify!($vector), ":\n"),
                concat!("push ", stringify!($vector), "\n"),
                "jmp host_exception_common\n",
            )*
            ".global host_exception_table\n",
            "host_exception_table:\n",
            $( concat!(".quad host_exception_", stringify!($vector), "\n"), )*
        );
    };
}

exception_stubs!(
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31
);

unsafe extern "C" {
    static host_exception_table: [u64; 32];
    fn host_nmi_entry();
    fn host_timer_entry();
    fn host_spurious_entry();
}

/// The host NMI entry: non-IST, safe for direct calls on the current stack.
pub fn nmi_entry() -> u64 {
    host_nmi_entry as *const () as u64
}

/// The host timer entry.
pub fn timer_entry() -> u64 {
    host_timer_entry as *const () as u64
}

/// The entries of the SMP scenarios' interrupts, made by hvkit-nmi-reinject's stub macro
/// (caller-saved registers saved, handler called with the frame, IRETQ): usable in an IDT gate
/// and for the direct call alike.
mod stubs {
    use hvkit_nmi_reinject::{InterruptFrame, idt_entry_stub};

    extern "C" fn ipi(_frame: &InterruptFrame) {
        super::host_ipi();
    }

    extern "C" fn wake(_frame: &InterruptFrame) {
        super::host_wake();
    }

    extern "C" fn storm(_frame: &InterruptFrame) {
        super::host_storm();
    }

    idt_entry_stub! {
        /// Vector [`TEST_IPI_VECTOR`](super::TEST_IPI_VECTOR).
        pub fn ipi_entry => ipi
    }
    idt_entry_stub! {
        /// Vector [`WAKE_VECTOR`](super::WAKE_VECTOR).
        pub fn wake_entry => wake
    }
    idt_entry_stub! {
        /// Vectors [`STORM_VECTOR_BASE`](super::STORM_VECTOR_BASE) + sender index.
        pub fn storm_entry => storm
    }
}

/// The host test-IPI entry (vector [`TEST_IPI_VECTOR`]).
pub fn ipi_entry() -> u64 {
    stubs::ipi_entry().address()
}

pub(crate) extern "C" fn host_timer() {
    let cpu = crate::percpu::current();
    HOST_TIMER_HANDLED.fetch_add(1, Ordering::SeqCst);
    cpu.timer_handled.fetch_add(1, Ordering::SeqCst);
    crate::apic::eoi();
    HOST_TIMER_EOIS.fetch_add(1, Ordering::SeqCst);
    cpu.timer_eois.fetch_add(1, Ordering::SeqCst);
}

/// The wake-up IPI handler: an idle application processor halts with interrupts enabled and
/// this IPI ends the HLT; the handler only sends the EOI.
fn host_wake() {
    crate::apic::eoi();
}

/// The storm-IPI entry (vectors [`STORM_VECTOR_BASE`] + sender index).
pub fn storm_entry() -> u64 {
    stubs::storm_entry().address()
}

/// The storm-IPI handler: finds which sender's vector is in service (interrupts stay disabled
/// in the handler, so exactly one of them is), counts it on this CPU and sends one EOI.
pub(crate) fn host_storm() {
    let cpu = crate::percpu::current();
    let sender = (0..crate::percpu::MAX_CPUS as u8)
        .find(|&sender| crate::apic::is_in_service(STORM_VECTOR_BASE + sender));
    match sender.and_then(|sender| cpu.storm_handled.get(usize::from(sender))) {
        Some(counter) => {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        None => {
            cpu.ipi_not_in_service.fetch_add(1, Ordering::SeqCst);
        }
    }
    crate::apic::eoi();
}

/// The test-IPI handler: counts the run on this CPU, checks that its vector is in service
/// (a fixed interrupt is in the ISR from acceptance until the EOI, SDM Vol. 3A 12.8.4
/// "Interrupt Acceptance for Fixed Interrupts") and sends one EOI.
pub(crate) fn host_ipi() {
    let cpu = crate::percpu::current();
    cpu.ipi_handled.fetch_add(1, Ordering::SeqCst);
    if !crate::apic::is_in_service(TEST_IPI_VECTOR) {
        cpu.ipi_not_in_service.fetch_add(1, Ordering::SeqCst);
    }
    crate::apic::eoi();
    cpu.ipi_eois.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn host_exception(vector: u64, frame: *const u64) -> ! {
    // SAFETY: the stub passes a pointer into the exception frame on the current stack.
    let (first, second) = unsafe { (frame.read(), frame.add(1).read()) };
    println!("HVKIT host exception vector={vector} frame[0]={first:#x} frame[1]={second:#x}");
    crate::port::exit(crate::port::status::PANIC)
}

/// A 64-bit interrupt gate (present, DPL 0, selector 0x08, no IST) for `handler`.
pub fn gate(handler: u64) -> (u64, u64) {
    let low = (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | ((handler >> 16) & 0xFFFF) << 48;
    (low, handler >> 32)
}

fn set_gate(vector: u8, handler: u64) {
    let (low, high) = gate(handler);
    let index = usize::from(vector) * 2;
    // SAFETY: single CPU, interrupts off; the IDT is only read by the CPU.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        idt.0[index] = low;
        idt.0[index + 1] = high;
    }
}

/// Descriptor-table register contents.
#[derive(Clone, Copy)]
pub struct TableRegister {
    /// Base.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// The host GDT (layout in `boot`: code, data, TSS descriptors, user segments).
pub fn gdtr() -> TableRegister {
    TableRegister {
        base: crate::boot::gdt() as u64,
        limit: (crate::boot::GDT_ENTRIES * 8 - 1) as u16,
    }
}

/// The host IDT.
pub fn idtr() -> TableRegister {
    TableRegister { base: core::ptr::addr_of!(IDT) as u64, limit: 256 * 16 - 1 }
}

/// This CPU's TSS base.
pub fn tss_base() -> u64 {
    crate::percpu::current().tss_base()
}

/// This CPU's TR selector.
pub fn tr_selector() -> u16 {
    crate::percpu::current().tr_selector()
}

/// Fills this CPU's TSS descriptor (an available 64-bit TSS, type 9: LTR of a busy one faults,
/// SDM Vol. 2B "LTR") and loads TR.
fn load_task_register() {
    let cpu = crate::percpu::current();
    let base = cpu.tss_base();
    let selector = cpu.tr_selector();
    let slot = usize::from(selector / 8);
    let limit = 103u64;
    let low = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    // SAFETY: each CPU writes only its own two GDT slots (selected by its index), before its
    // own LTR; no other CPU loads that selector.
    unsafe {
        let gdt = &mut *crate::boot::gdt();
        if let (Some(_), Some(_)) = (gdt.get(slot), gdt.get(slot + 1)) {
            gdt[slot] = low;
            gdt[slot + 1] = base >> 32;
        }
        x86::task::load_tr(x86::segmentation::SegmentSelector::from_raw(selector));
    }
}

/// Loads the shared IDT on an application processor and this CPU's TSS.
pub fn init_application_processor() {
    load_task_register();
    load_idt();
}

/// Fills the bootstrap processor's TSS descriptor, loads TR, fills and loads the IDT.
pub fn init() {
    load_task_register();
    for vector in 0..32u8 {
        // SAFETY: the table has 32 entries defined in assembly above.
        let handler =
            unsafe { core::ptr::addr_of!(host_exception_table).read()[usize::from(vector)] };
        set_gate(vector, handler);
    }
    set_gate(2, nmi_entry());
    set_gate(TIMER_VECTOR, timer_entry());
    set_gate(TEST_IPI_VECTOR, ipi_entry());
    set_gate(WAKE_VECTOR, stubs::wake_entry().address());
    for sender in 0..crate::percpu::MAX_CPUS as u8 {
        set_gate(STORM_VECTOR_BASE + sender, storm_entry());
    }
    set_gate(SPURIOUS_VECTOR, host_spurious_entry as *const () as u64);
    load_idt();
}

fn load_idt() {
    let idtr = idtr();
    let pointer = (idtr.limit, idtr.base);
    #[repr(C, packed)]
    struct Pointer(u16, u64);
    let descriptor = Pointer(pointer.0, pointer.1);
    // SAFETY: the IDT is a static, valid for the kernel's lifetime.
    unsafe {
        core::arch::asm!("lidt [{0}]", in(reg) &descriptor, options(nostack, readonly, preserves_flags))
    };
}
