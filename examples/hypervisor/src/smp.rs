//! Application-processor bring-up (SDM Vol. 3A 9.4 "Multiple-Processor (MP) Initialization",
//! 9.4.4.1 "Typical BSP Initialization Sequence") and the APs' command loop.
//!
//! The bootstrap processor copies a real-mode trampoline to [`TRAMPOLINE`] (below 1 MiB, 4 KiB
//! aligned: the start-up IPI's vector is its page number), then broadcasts INIT, waits 10 ms,
//! broadcasts a start-up IPI, waits 200 µs, broadcasts a second one and waits 200 µs again
//! (an AP that already left the wait-for-SIPI state ignores the second). Each AP goes through
//! protected mode to long mode on the BSP's page tables, takes the next CPU index with a locked
//! add (the SDM's check-in counter), its own stack, per-CPU state (GS base), TSS and local
//! APIC, marks itself online and polls its command word with interrupts enabled between polls.

use crate::percpu::{self, MAX_CPUS};
use crate::{apic, host, port, println};
use core::sync::atomic::{AtomicU32, Ordering};
use hvkit_apic::{Ipi, Target};

/// Physical address the trampoline is copied to (page 8: start-up IPI vector 0x08).
pub const TRAMPOLINE: u64 = 0x8000;

/// Stack per application processor.
const AP_STACK_SIZE: usize = 32 * 1024;

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
    .global smp_trampoline_start
    .code16
smp_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl ({base} + smp_trampoline_gdt_pointer - smp_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $({base} + smp_trampoline_32 - smp_trampoline_start)

    .code32
smp_trampoline_32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* CR4.PAE, the BSP's page tables, EFER.LME, then CR0.PG|NE|PE (NE: VMXON needs it). */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl ({base} + smp_trampoline_cr3 - smp_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000021, %eax
    movl %eax, %cr0
    ljmp $0x18, $({base} + smp_trampoline_64 - smp_trampoline_start)

    .code64
smp_trampoline_64:
    movq ({base} + smp_trampoline_entry - smp_trampoline_start), %rax
    jmpq *%rax

    .balign 8
smp_trampoline_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
smp_trampoline_gdt_pointer:
    .short 31
    .long {base} + smp_trampoline_gdt - smp_trampoline_start
    .balign 8
smp_trampoline_cr3:
    .quad boot_pml4
smp_trampoline_entry:
    .quad smp_ap_entry
    .global smp_trampoline_end
smp_trampoline_end:

    /* Long mode on the trampoline GDT: load the kernel's GDT and segments, take an index. */
    .balign 16
smp_ap_entry:
    lgdt boot_gdt_pointer(%rip)
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %eax
    lock xaddl %eax, smp_next_index(%rip)
    cmpl ${max_cpus}, %eax
    jae 2f
    movl %eax, %edi
    /* Stack top of slot index - 1 is smp_ap_stacks + index * size. */
    movl %eax, %ecx
    imulq ${stack_size}, %rcx
    leaq smp_ap_stacks(%rip), %rsp
    addq %rcx, %rsp
    /* CS from the kernel's GDT (same selector value, 0x08). */
    leaq 1f(%rip), %rax
    pushq $0x08
    pushq %rax
    lretq
1:
    xorl %ebp, %ebp
    call {ap_main}
2:
    cli
    hlt
    jmp 2b

    .section .data
    .balign 4
    .global smp_next_index
smp_next_index:
    .long 1

    .section .bss
    .balign 4096
smp_ap_stacks:
    .skip {stack_size} * ({max_cpus} - 1)
    .section .text
"#,
    base = const TRAMPOLINE,
    max_cpus = const MAX_CPUS,
    stack_size = const AP_STACK_SIZE,
    ap_main = sym ap_main,
    options(att_syntax)
);

unsafe extern "C" {
    static smp_trampoline_start: u8;
    static smp_trampoline_end: u8;
    static smp_next_index: AtomicU32;
}

/// Commands the bootstrap processor gives an AP through its per-CPU command word.
pub mod command {
    /// Switch the local APIC to x2APIC mode.
    pub const SWITCH_X2APIC: u32 = 1;
    /// Nothing to do but answer (a round trip).
    pub const PING: u32 = 2;
    /// `last_result` = 1 when the test-IPI vector is neither in service nor requested.
    pub const CHECK_CLEAN: u32 = 3;
    /// Enter VMX operation with this CPU's own VMXON region and VMCS (`last_result` = 1 on
    /// success).
    pub const VMX_ON: u32 = 4;
    /// Run this CPU's guest until told to stop, re-delivering host events by direct call.
    pub const GUEST_DIRECT_CALL: u32 = 5;
    /// The same with the self-NMI strategy.
    pub const GUEST_SELF_NMI: u32 = 6;
    /// Switch this CPU's host to FRED event delivery, its VMCS's host CR4 too (`last_result`
    /// = 1 on success).
    pub const FRED_ON: u32 = 7;
    /// Switch this CPU's host back to IDT event delivery (`last_result` = 1 on success).
    pub const FRED_OFF: u32 = 8;
    /// Run this CPU's guest (FRED host), re-delivering host events by FRED direct call.
    pub const GUEST_FRED_DIRECT_CALL: u32 = 9;
    /// The same with the self-NMI strategy unblocked by ERETS.
    pub const GUEST_FRED_SELF_NMI: u32 = 10;
}

/// Waits at least `microseconds` with PIT channel 2 in mode 0 (interrupt on terminal count,
/// read back through port 0x61 bit 5), in chunks of at most 50 ms.
pub fn wait_microseconds(microseconds: u32) {
    let mut left = u64::from(microseconds);
    while left > 0 {
        let chunk = left.min(50_000);
        left -= chunk;
        // 1.193182 MHz input clock.
        let count = ((chunk * 1_193_182) / 1_000_000).clamp(1, 0xFFFF) as u16;
        // Gate on (bit 0), speaker off (bit 1).
        port::outb(0x61, (port::inb(0x61) & !0x02) | 0x01);
        // Channel 2, low then high byte, mode 0, binary.
        port::outb(0x43, 0xB0);
        port::outb(0x42, count as u8);
        port::outb(0x42, (count >> 8) as u8);
        // Bounded: an emulator without the read-back still moves on.
        for _ in 0..20_000_000u32 {
            if port::inb(0x61) & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

/// The delays of the INIT/start-up sequence.
struct PitDelay;

impl hvkit_apic::MicrosecondDelay for PitDelay {
    fn wait_microseconds(&mut self, microseconds: u32) {
        wait_microseconds(microseconds);
    }
}

/// Brings up every application processor. Returns how many checked in.
pub fn start_application_processors() -> usize {
    // SAFETY: the trampoline is position-dependent code assembled for `TRAMPOLINE`; the page
    // is identity-mapped, writable, below 1 MiB and used by nothing else of this kernel.
    unsafe {
        let start = core::ptr::addr_of!(smp_trampoline_start);
        let length = core::ptr::addr_of!(smp_trampoline_end) as usize - start as usize;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, length);
    }
    let mut delay = PitDelay;
    use hvkit_apic::MicrosecondDelay as _;
    // SDM 9.4.4.1: INIT to all excluding self, 10 ms, start-up IPI, 200 µs, start-up IPI, 200 µs.
    let page = (TRAMPOLINE >> 12) as u8;
    let sequence = [
        (Ipi::init(Target::AllExcludingSelf), 10_000),
        (Ipi::startup(page, Target::AllExcludingSelf), 200),
        (Ipi::startup(page, Target::AllExcludingSelf), 200),
    ];
    for (ipi, wait) in sequence {
        if let Err(error) = apic::send(&ipi) {
            println!("HVKIT error: MP initialization IPI: {error}");
            return 1;
        }
        delay.wait_microseconds(wait);
    }
    // Check-in: wait until the index counter has been stable for 20 ms and every AP that took
    // an index is online (at most 1 s).
    let started = || {
        // SAFETY: the counter is a static the APs update with locked adds.
        (unsafe { smp_next_index.load(Ordering::SeqCst) } as usize).min(MAX_CPUS)
    };
    let mut stable_for = 0;
    let mut last = started();
    for _ in 0..1000 {
        delay.wait_microseconds(1000);
        let now = started();
        let online = percpu::online_count();
        if now == last && online == now {
            stable_for += 1;
            if stable_for >= 20 {
                break;
            }
        } else {
            stable_for = 0;
        }
        last = now;
    }
    percpu::online_count()
}

/// Gives CPU `index` `command` and waits (bounded) until it has done it.
pub fn run_on(index: usize, command: u32) -> bool {
    match start_on(index, command) {
        Some(done) => wait_done(index, done, 200_000_000),
        None => false,
    }
}

/// Gives CPU `index` `command` and wakes it, without waiting. Returns the CPU's finished-command
/// count from before, for [`wait_done`].
pub fn start_on(index: usize, command: u32) -> Option<u32> {
    let cpu = percpu::cpu(index)?;
    let done = cpu.command_done.load(Ordering::SeqCst);
    cpu.command.store(command, Ordering::SeqCst);
    let destination = hvkit_apic::Destination::Physical(cpu.apic_id.load(Ordering::SeqCst));
    let wake = Ipi::fixed(host::WAKE_VECTOR, hvkit_apic::FixedTarget::To(destination)).ok()?;
    apic::send(&wake).ok()?;
    Some(done)
}

/// Waits (at most `polls` polls) until CPU `index` has finished the command started when its
/// finished-command count was `done`.
pub fn wait_done(index: usize, done: u32, polls: u32) -> bool {
    let Some(cpu) = percpu::cpu(index) else { return false };
    for _ in 0..polls {
        if cpu.command_done.load(Ordering::SeqCst) != done {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// An application processor's Rust entry (index from the check-in counter, own stack).
extern "C" fn ap_main(index: u32) -> ! {
    let cpu = percpu::install(index as usize);
    host::init_application_processor();
    if let Err(error) = apic::init() {
        println!("HVKIT error: cpu {index}: local APIC: {error}");
        halt()
    }
    cpu.online.store(true, Ordering::SeqCst);
    loop {
        let command = cpu.command.load(Ordering::SeqCst);
        if command != 0 {
            execute(command);
            cpu.command.store(0, Ordering::SeqCst);
            cpu.command_done.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        // Idle: halt with interrupts enabled. An interrupt that arrived since the check above
        // is taken right after STI's one-instruction shadow, which ends the HLT; `run_on`
        // sends a wake-up IPI after each command.
        // SAFETY: the IDT and this CPU's handlers are set up; interrupts are off again after
        // the HLT.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
}

fn execute(command: u32) {
    match command {
        command::SWITCH_X2APIC => {
            if let Err(error) = apic::switch_to_x2apic() {
                println!(
                    "HVKIT error: cpu {}: x2APIC: {error}",
                    percpu::current().index.load(Ordering::Relaxed)
                );
            }
        }
        command::PING => {}
        command::VMX_ON => {
            let ok = crate::smpvmx::enable_on_this_cpu();
            percpu::current().last_result.store(u32::from(ok), Ordering::SeqCst);
        }
        command::GUEST_DIRECT_CALL => crate::smpvmx::run_guest(crate::smpvmx::Strategy::DirectCall),
        command::GUEST_SELF_NMI => crate::smpvmx::run_guest(crate::smpvmx::Strategy::SelfNmi),
        command::GUEST_FRED_DIRECT_CALL => {
            crate::smpvmx::run_guest(crate::smpvmx::Strategy::FredDirectCall)
        }
        command::GUEST_FRED_SELF_NMI => {
            crate::smpvmx::run_guest(crate::smpvmx::Strategy::FredSelfNmi)
        }
        command::FRED_ON | command::FRED_OFF => {
            let ok = crate::smpvmx::set_fred_host(command == command::FRED_ON);
            percpu::current().last_result.store(u32::from(ok), Ordering::SeqCst);
        }
        command::CHECK_CLEAN => {
            let vector = host::TEST_IPI_VECTOR;
            let clean = !apic::is_in_service(vector) && !apic::is_requested(vector);
            percpu::current().last_result.store(u32::from(clean), Ordering::SeqCst);
        }
        other => println!("HVKIT error: unknown AP command {other}"),
    }
}

fn halt() -> ! {
    loop {
        // SAFETY: parks this CPU for good.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Prints one line per CPU that checked in.
pub fn report_cpus() {
    for cpu in percpu::online() {
        println!(
            "HVKIT cpu index={} apic_id={} bsp={} tr={:#x} tss={:#x} gs_base={:#x} apic={} online=1",
            cpu.index.load(Ordering::SeqCst),
            cpu.apic_id.load(Ordering::SeqCst),
            cpu.index.load(Ordering::SeqCst) == 0,
            cpu.tr_selector(),
            cpu.tss_base(),
            cpu.self_address.load(Ordering::SeqCst),
            if cpu.x2apic.load(Ordering::SeqCst) { "x2apic" } else { "xapic" },
        );
    }
}
