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
/// The host spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

#[repr(C, align(16))]
struct Tss([u8; 104]);

static mut TSS: Tss = Tss([0; 104]);

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
    pop rdx
    pop rax
    iretq

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

pub(crate) extern "C" fn host_timer() {
    HOST_TIMER_HANDLED.fetch_add(1, Ordering::SeqCst);
    crate::apic::eoi();
    HOST_TIMER_EOIS.fetch_add(1, Ordering::SeqCst);
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

/// The host GDT.
pub fn gdtr() -> TableRegister {
    TableRegister { base: crate::boot::gdt() as u64, limit: 5 * 8 - 1 }
}

/// The host IDT.
pub fn idtr() -> TableRegister {
    TableRegister { base: core::ptr::addr_of!(IDT) as u64, limit: 256 * 16 - 1 }
}

/// The host TSS base.
pub fn tss_base() -> u64 {
    core::ptr::addr_of!(TSS) as u64
}

/// Fills the TSS descriptor, loads TR, and loads the IDT.
pub fn init() {
    let base = tss_base();
    let limit = 103u64;
    let low = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    // SAFETY: single CPU; the GDT entries 3-4 are the TSS slot, unused until LTR below.
    unsafe {
        let gdt = &mut *crate::boot::gdt();
        gdt[3] = low;
        gdt[4] = base >> 32;
        core::arch::asm!("ltr {0:x}", in(reg) 0x18u16, options(nostack, preserves_flags));
    }
    for vector in 0..32u8 {
        // SAFETY: the table has 32 entries defined in assembly above.
        let handler =
            unsafe { core::ptr::addr_of!(host_exception_table).read()[usize::from(vector)] };
        set_gate(vector, handler);
    }
    set_gate(2, nmi_entry());
    set_gate(TIMER_VECTOR, timer_entry());
    set_gate(SPURIOUS_VECTOR, host_spurious_entry as *const () as u64);
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
