//! Multiboot2 header, PVH note, and the 32-bit entry that switches to long mode.
//!
//! A CPU without long mode (CPUID.80000001H:EDX.LM[bit 29] = 0, Intel SDM Vol. 2A, CPUID) gets
//! a report from 32-bit code: one `HVKIT NOLONGMODE reason="..."` line, `HVKIT EXIT status=5`
//! ([`NO_LONG_MODE_STATUS`]) and the same ways out of the emulator as `port::exit`.
//!
//! Memory map: identity-mapped 0-4 GiB with 2 MiB pages (covers the local APIC at 0xFEE00000).
//! GDT: 0x08 64-bit code, 0x10 data, 0x18 the bootstrap processor's TSS (filled in from Rust),
//! 0x28 user data and 0x30 user 64-bit code (DPL 3, for the FRED ERETU step:
//! IA32_STAR\[63:48\] = 0x20), then from 0x38 one TSS descriptor per application processor.

core::arch::global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
multiboot2_header:
    .long 0xE85250D6
    .long 0
    .long multiboot2_header_end - multiboot2_header
    .long -(0xE85250D6 + (multiboot2_header_end - multiboot2_header))
    .short 0
    .short 0
    .long 8
multiboot2_header_end:

    .section .boot.text, "ax"
    .code32
    .global _start
_start:
    cli
    movl $boot_stack_top, %esp
    movl %eax, boot_magic
    movl %ebx, boot_info

    /* Long mode needs CPUID.80000001H:EDX.LM (bit 29); the leaf exists when 80000000H says so. */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    btl $29, %edx
    jnc no_long_mode

    /* PML4[0] -> PDPT */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4

    /* PDPT[0..3] -> PD0..PD3 */
    movl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt
    addl $0x1000, %eax
    movl %eax, boot_pdpt + 8
    addl $0x1000, %eax
    movl %eax, boot_pdpt + 16
    addl $0x1000, %eax
    movl %eax, boot_pdpt + 24

    /* 2048 2 MiB pages: present, writable, page size */
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    movl %ecx, %eax
    shrl $11, %eax
    movl %eax, boot_pd + 4(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 1b

    movl $boot_pml4, %eax
    movl %eax, %cr3

    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4

    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr

    movl %cr0, %eax
    orl $0x80000021, %eax
    movl %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $long_mode_entry

no_long_mode:
    /* COM1 at 115200 8N1 (the settings port::serial_init uses), then the report. */
    movw $0x3F9, %dx
    movb $0x00, %al
    outb %al, %dx
    movw $0x3FB, %dx
    movb $0x80, %al
    outb %al, %dx
    movw $0x3F8, %dx
    movb $0x01, %al
    outb %al, %dx
    movw $0x3F9, %dx
    movb $0x00, %al
    outb %al, %dx
    movw $0x3FB, %dx
    movb $0x03, %al
    outb %al, %dx
    movw $0x3FA, %dx
    movb $0xC7, %al
    outb %al, %dx
    movw $0x3FC, %dx
    movb $0x0B, %al
    outb %al, %dx
    movl $no_long_mode_text, %esi
3:
    movb (%esi), %bl
    testb %bl, %bl
    jz 5f
    /* Wait (bounded) for the transmitter holding register to empty. */
    movw $0x3FD, %dx
    movl $100000, %ecx
4:
    inb %dx, %al
    testb $0x20, %al
    jnz 6f
    loop 4b
6:
    movw $0x3F8, %dx
    movb %bl, %al
    outb %al, %dx
    incl %esi
    jmp 3b
5:
    /* QEMU isa-debug-exit, Bochs iodebug (back to the debugger, whose rc file quits), then
       the Bochs "Shutdown" port. */
    movw $0xF4, %dx
    movl ${status}, %eax
    outl %eax, %dx
    movw $0x8A00, %dx
    movw $0x8A00, %ax
    outw %ax, %dx
    movw $0x8AE0, %ax
    outw %ax, %dx
    movw $0x8900, %dx
    movl $no_long_mode_shutdown, %esi
7:
    movb (%esi), %al
    testb %al, %al
    jz 8f
    outb %al, %dx
    incl %esi
    jmp 7b
8:
    cli
    hlt
    jmp 8b
no_long_mode_text:
    .ascii "HVKIT NOLONGMODE reason=\"CPUID.80000001H:EDX.LM[bit 29] = 0: this CPU has no "
    .ascii "long mode (Intel 64); the hypervisor needs a 64-bit CPU\"\r\n"
    .asciz "HVKIT EXIT status={status}\r\n"
no_long_mode_shutdown:
    .asciz "Shutdown"

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    call kernel_main
2:
    hlt
    jmp 2b

    .section .data
    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0
    .quad 0
    .quad 0x00CFF2000000FFFF
    .quad 0x00AFFA000000FFFF
    .skip {tss_slot_bytes}
boot_gdt_end:
    .global boot_gdt_pointer
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .global boot_magic
boot_magic:
    .long 0
    .global boot_info
boot_info:
    .long 0

    .section .bss
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 65536
    .global boot_stack_top
boot_stack_top:
    .section .text
"#,
    status = const NO_LONG_MODE_STATUS,
    tss_slot_bytes = const 16 * (crate::percpu::MAX_CPUS - 1),
    options(att_syntax)
);

/// Exit status of a CPU without long mode (`HVKIT EXIT status=5`, after `HVKIT NOLONGMODE`).
pub const NO_LONG_MODE_STATUS: u32 = 5;

/// GDT entries: null, code, data, the bootstrap processor's TSS (two), user data, user code,
/// and two per application processor for its TSS descriptor.
pub const GDT_ENTRIES: usize = 7 + 2 * (crate::percpu::MAX_CPUS - 1);

unsafe extern "C" {
    static mut boot_gdt: [u64; GDT_ENTRIES];
    static boot_magic: u32;
}

/// The GDT (for the TSS descriptors and the VMCS host/guest GDTR).
pub fn gdt() -> *mut [u64; GDT_ENTRIES] {
    core::ptr::addr_of_mut!(boot_gdt)
}

/// The value GRUB put in EAX (0x36D76289 for Multiboot2; the PVH path leaves other values).
pub fn magic() -> u32 {
    // SAFETY: written once by the boot code before Rust runs.
    unsafe { core::ptr::addr_of!(boot_magic).read_volatile() }
}
